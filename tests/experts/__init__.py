"""experts/: expert clients and how their failures are classified, the live vote and cascade, the
circuit breakers kept in this process, and the vLLM launcher's pure parts.

No server here: no PostgreSQL, Redis, vLLM or gateway, and no fixture from tests/gateway. CI runs this
room with every server URL pointed at a closed port (.ci/run).
"""
