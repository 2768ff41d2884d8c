"""gateway/keys/rate_limit.py's rule, counted in this process (no Redis configured): windows, limits, Retry-After."""

from __future__ import annotations

import math

import pytest

import gateway.keys.rate_limit as rate_limit
from gateway.keys.rate_limit import RateLimiter, Refusal
from gateway.shared_state import SharedState

WINDOW_START = 60 * 29_000_000  # a minute boundary


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(WINDOW_START + 15.0)
    monkeypatch.setattr(rate_limit.time, "time", clock)
    return clock


def limiter() -> RateLimiter:
    return RateLimiter(SharedState(None))


async def test_retry_after_is_the_time_left_in_the_window(clock: Clock) -> None:
    for offset in (0.0, 15.0, 44.5, 59.2):
        limits = limiter()
        clock.now = WINDOW_START + offset
        assert await limits.admit(7, rpm=1, tpm=None) is None
        refusal = await limits.admit(7, rpm=1, tpm=None)
        assert refusal == Refusal("requests", math.ceil(60 - offset))
    assert math.ceil(60 - 59.2) == 1


async def test_retry_after_follows_the_window_length(clock: Clock) -> None:
    limits = RateLimiter(SharedState(None), window_s=10)
    clock.now = WINDOW_START + 3.5
    await limits.admit(7, rpm=1, tpm=None)
    assert await limits.admit(7, rpm=1, tpm=None) == Refusal("requests", 7)


async def test_requests_per_minute_count_per_key_and_reset_with_the_window(clock: Clock) -> None:
    limits = limiter()
    verdicts = [await limits.admit(7, rpm=3, tpm=None) for _ in range(4)]
    assert verdicts[:3] == [None, None, None] and verdicts[3] is not None and verdicts[3].limit == "requests"
    assert await limits.admit(8, rpm=3, tpm=None) is None  # another key has its own count
    clock.now += 45.0  # the next minute
    assert await limits.admit(7, rpm=3, tpm=None) is None


async def test_tokens_per_minute_refuse_once_reached_and_are_not_counted_as_requests(clock: Clock) -> None:
    limits = limiter()
    assert await limits.admit(7, rpm=2, tpm=100) is None
    await limits.add_tokens(7, 99)
    assert await limits.admit(7, rpm=2, tpm=100) is None  # 99 < 100
    await limits.add_tokens(7, 1)
    refusal = await limits.admit(7, rpm=2, tpm=100)
    assert refusal == Refusal("tokens", 45)
    # Refused requests were not counted: a new window admits two again, and their tokens start from zero.
    clock.now += 60.0
    assert [await limits.admit(7, rpm=2, tpm=100) for _ in range(2)] == [None, None]
    assert (await limits.admit(7, rpm=2, tpm=100)).limit == "requests"  # type: ignore[union-attr]


async def test_tokens_added_in_an_earlier_window_do_not_count(clock: Clock) -> None:
    limits = limiter()
    await limits.add_tokens(7, 500)
    clock.now += 60.0
    assert await limits.admit(7, rpm=None, tpm=100) is None


async def test_a_token_limit_alone_never_refuses_for_requests(clock: Clock) -> None:
    limits = limiter()
    assert [await limits.admit(7, rpm=None, tpm=10) for _ in range(50)] == [None] * 50
    await limits.add_tokens(7, 10)
    assert await limits.admit(7, rpm=None, tpm=10) == Refusal("tokens", 45)


async def test_a_key_without_limits_is_never_counted(clock: Clock) -> None:
    limits = limiter()
    assert [await limits.admit(7, rpm=None, tpm=None) for _ in range(5)] == [None] * 5
    assert await limits.admit(7, rpm=1, tpm=None) is None  # the unlimited requests left no count behind


def test_redis_keys_are_per_prefix_key_and_window() -> None:
    limits = RateLimiter(SharedState(None, prefix="tenant-a"))
    assert limits._redis_key(7, 123) == "tenant-a:ratelimit:7:123"


class RecordingState(SharedState):
    """Redis as the limiter sees it: the scripts it is sent, answered as told (None: Redis is down)."""

    def __init__(self, answer: object) -> None:
        super().__init__(None, prefix="moe")
        self.answer = answer
        self.calls: list[tuple[str, list[str], list[object]]] = []

    async def run_script(self, script: str, keys: list[str], args: list[object]) -> object:
        self.calls.append((script, keys, args))
        return self.answer


async def test_redis_is_asked_to_count_in_this_windows_counter(clock: Clock) -> None:
    state = RecordingState(answer=0)
    limits = RateLimiter(state)
    clock.now = WINDOW_START + 30.0
    assert await limits.admit(7, rpm=5, tpm=None) is None
    assert await limits.admit(8, rpm=None, tpm=100) is None
    await limits.add_tokens(7, 42)
    number = WINDOW_START // 60
    assert state.calls == [
        (rate_limit._ADMIT, [f"moe:ratelimit:7:{number}"], [5, 0, 120]),  # 0: unlimited; expiry: two windows
        (rate_limit._ADMIT, [f"moe:ratelimit:8:{number}"], [0, 100, 120]),
        (rate_limit._ADD_TOKENS, [f"moe:ratelimit:7:{number}"], [42, 120]),
    ]
    assert limits._local == {}  # Redis answered: nothing counted in this process


@pytest.mark.parametrize(("verdict", "limit"), [(1, "requests"), (2, "tokens")])
async def test_redis_verdicts_become_refusals(clock: Clock, verdict: int, limit: str) -> None:
    limits = RateLimiter(RecordingState(answer=verdict))
    assert await limits.admit(7, rpm=5, tpm=100) == Refusal(limit, 45)
