"""Pure unit tests: no server, no database server, no Redis, no fixture from tests/conftest.py.

They run in isolation (`python -m pytest --noconftest tests/unit`), which is how the mutation run
(`make mutation`, bench/mutation.py) uses them; `make test` runs them with the rest of the suite.
"""
