"""Circuit breakers shared in the real Redis server (db 13): a success clears an expert's failure count.

tests/experts/test_local_breakers.py checks the same rule as kept in one process while Redis is down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from experts.breaker import Breakers, BreakerSettings
from gateway.shared_state import SharedState
from tests.gateway.support import fresh_redis_db

REDIS_DB = 13  # a database no other test uses


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Breakers, Breakers]]:
    """Two replicas' shared state on one Redis database; breakers open at the third failure within 30 s."""
    with fresh_redis_db(REDIS_DB) as url:
        settings = BreakerSettings(threshold=3, window_s=30.0, cooldown_s=30.0)
        states = SharedState(url, breaker=settings), SharedState(url, breaker=settings)
        for state in states:
            await state.start()
            assert state.redis_ok
        try:
            yield states[0].breakers, states[1].breakers
        finally:
            for state in states:
                await state.stop()


async def test_a_success_clears_the_shared_failure_count(replicas: tuple[Breakers, Breakers]) -> None:
    a, b = replicas
    await a.record_failure("stem")
    await b.record_failure("stem")
    await a.record_success("stem")  # the expert answered: earlier failures no longer count, on any replica
    await b.record_failure("stem")
    await a.record_failure("stem")
    assert await a.open_breakers(["stem", "general"]) == set()
    assert await b.open_breakers(["stem", "general"]) == set()
    await b.record_failure("stem")  # the third since the success
    assert await a.open_breakers(["stem", "general"]) == {"stem"}


async def test_a_success_closes_an_open_shared_breaker(replicas: tuple[Breakers, Breakers]) -> None:
    a, b = replicas
    for state in (a, b, a):
        await state.record_failure("stem")
    assert await b.open_breakers(["stem"]) == {"stem"}
    await b.record_success("stem")
    assert await a.open_breakers(["stem"]) == set()
    await a.record_failure("stem")
    assert await b.open_breakers(["stem"]) == set()


async def test_a_success_costs_a_redis_delete_only_when_there_is_something_to_reset(
    replicas: tuple[Breakers, Breakers], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer used to await a delete of the expert's breaker keys before it went out."""
    a, b = replicas
    deletes: list[tuple[str, ...]] = []
    original = a._call

    async def counting(command: str, *args: object, **kwargs: object) -> object:
        if command == "delete":
            deletes.append(args)  # type: ignore[arg-type]
        return await original(command, *args, **kwargs)

    monkeypatch.setattr(a, "_call", counting)
    assert await a.open_breakers(["stem", "general"]) == set()
    await a.record_success("stem")
    assert deletes == []  # nothing was set
    await b.record_failure("stem")  # another replica's failure, seen by this one's next ranking
    assert await a.open_breakers(["stem", "general"]) == set()
    await a.record_success("stem")
    assert len(deletes) == 1
    await a.record_success("stem")
    assert len(deletes) == 1  # cleared already
    await b.record_failure("stem")
    await b.record_failure("stem")
    await b.record_failure("stem")  # opens it
    assert await a.open_breakers(["stem"]) == {"stem"}
    await a.record_success("stem")  # the half-open try answered: closed for every replica
    assert len(deletes) == 2 and await b.open_breakers(["stem"]) == set()
