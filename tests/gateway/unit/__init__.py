"""The gateway's pure unit tests: no server, no database server, no Redis, no fixture from a conftest.

They run in isolation (`python -m pytest --noconftest tests/gateway/unit`), as the mutation run
(`make mutation`, bench/mutation.py) runs them; `make test` runs them with the rest of the suite.
"""
