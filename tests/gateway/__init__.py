"""The gateway, tested against real servers: a running gateway, PostgreSQL and Redis (the machine's, or
throwaway ones on free ports for the tests that stop them), a scripted upstream, a vLLM CPU server.

Fixtures live in tests/gateway/conftest.py, the helpers test files import in tests/gateway/support.py;
tests/gateway/unit holds the gateway's tests that need no server.
"""
