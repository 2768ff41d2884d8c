"""training/: the pool, offline evaluation and aggregation, the baselines.

No server here: no PostgreSQL, Redis, vLLM or gateway, and no fixture from tests/gateway. CI runs this
room with every server URL pointed at a closed port (.ci/run).
"""
