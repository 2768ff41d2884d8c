"""experts/breaker.py's circuit breakers as kept in this process (no Redis configured, or Redis down)."""

from __future__ import annotations

import pytest

import experts.breaker as breaker
from experts.breaker import Breakers, BreakerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(breaker.time, "monotonic", clock)
    return clock


def state(threshold: int = 3, window_s: float = 10.0, cooldown_s: float = 30.0) -> Breakers:
    return Breakers(None, BreakerSettings(threshold=threshold, window_s=window_s, cooldown_s=cooldown_s))


async def fail(shared: Breakers, expert: str, times: int) -> None:
    for _ in range(times):
        await shared.record_failure(expert)


async def test_threshold_failures_open_the_breaker_for_that_expert_only(clock: Clock) -> None:
    shared = state()
    await fail(shared, "stem", 2)
    assert await shared.open_breakers(["stem", "general"]) == set()
    await fail(shared, "stem", 1)
    assert await shared.open_breakers(["stem", "general"]) == {"stem"}


async def test_a_success_clears_the_failure_count(clock: Clock) -> None:
    shared = state()
    await fail(shared, "stem", 2)
    await shared.record_success("stem")
    await fail(shared, "stem", 2)
    assert await shared.open_breakers(["stem"]) == set()  # 2 since the success, not 4
    await fail(shared, "stem", 1)
    assert await shared.open_breakers(["stem"]) == {"stem"}


async def test_a_success_closes_an_open_breaker(clock: Clock) -> None:
    shared = state()
    await fail(shared, "stem", 3)
    await shared.record_success("stem")
    assert await shared.open_breakers(["stem"]) == set()


async def test_failures_older_than_the_window_do_not_count(clock: Clock) -> None:
    shared = state(window_s=10.0)
    await fail(shared, "stem", 2)
    clock.now += 10.0
    await fail(shared, "stem", 2)
    assert await shared.open_breakers(["stem"]) == set()
    clock.now += 9.9
    await fail(shared, "stem", 1)
    assert await shared.open_breakers(["stem"]) == {"stem"}


async def test_an_open_breaker_closes_after_its_cooldown_and_starts_counting_afresh(clock: Clock) -> None:
    shared = state(cooldown_s=30.0)
    await fail(shared, "stem", 3)
    clock.now += 29.9
    assert await shared.open_breakers(["stem"]) == {"stem"}
    clock.now += 0.1
    assert await shared.open_breakers(["stem"]) == set()  # half-open: the next request tries it
    await fail(shared, "stem", 2)  # the failures that opened it were cleared when it opened
    assert await shared.open_breakers(["stem"]) == set()


async def test_a_threshold_of_one_opens_at_the_first_failure(clock: Clock) -> None:
    shared = state(threshold=1)
    await fail(shared, "stem", 1)
    assert await shared.open_breakers(["stem", "general"]) == {"stem"}
