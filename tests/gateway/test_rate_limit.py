"""Per-key rate limits against the real Redis server (db 11): shared by replicas, per-process while Redis is down."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.keys.rate_limit import RateLimiter, Refusal
from gateway.shared_state import SharedState
from tests.gateway.support import MATH_QUESTION, REDIS_HOST, REDIS_PORT, fresh_redis_db, routed_config, running_gateway
from tests.gateway.tcp_proxy import tcp_proxy
from tests.gateway.test_api_keys import ask, issue_key, sdk

REDIS_DB = 11  # shared with tests/gateway/test_api_keys.py, emptied per test


@pytest.fixture
def redis_url() -> Iterator[str]:
    with fresh_redis_db(REDIS_DB) as url:
        yield url


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters with their own Redis connections, as two gateway replicas have."""
    states = [SharedState(redis_url), SharedState(redis_url)]
    for state in states:
        await state.start()
        assert state.redis_ok
    yield RateLimiter(states[0]), RateLimiter(states[1])
    for state in states:
        await state.stop()


def seconds_left(now: float) -> int:
    """Whole seconds from `now` to the end of its one-minute window: what Retry-After must say."""
    return math.ceil(60 - now % 60)


def fresh_window(margin_s: float = 10.0) -> None:
    """Wait for the next minute when this one ends within `margin_s`, so a test's requests share one window."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.1)


async def test_request_limit_is_shared_by_replicas(replicas: tuple[RateLimiter, RateLimiter]) -> None:
    fresh_window()
    a, b = replicas
    verdicts = [await (a if i % 2 else b).admit(7, rpm=3, tpm=None) for i in range(3)]
    before = time.time()
    verdicts.append(await b.admit(7, rpm=3, tpm=None))
    after = time.time()
    assert verdicts[:3] == [None, None, None]
    refusal = verdicts[3]
    assert isinstance(refusal, Refusal) and refusal.limit == "requests"
    assert seconds_left(after) <= refusal.retry_after_s <= seconds_left(before)  # until the window ends
    assert await a.admit(8, rpm=3, tpm=None) is None  # another key has its own count


async def test_token_limit_refuses_once_reached_without_counting_the_refused(
    replicas: tuple[RateLimiter, RateLimiter], redis_url: str
) -> None:
    fresh_window()
    a, b = replicas
    assert await a.admit(7, rpm=10, tpm=100) is None
    await a.add_tokens(7, 60)
    assert await b.admit(7, rpm=10, tpm=100) is None  # 60 < 100: still admitted
    await b.add_tokens(7, 60)
    refusal = await a.admit(7, rpm=10, tpm=100)
    assert refusal is not None and refusal.limit == "tokens"
    counters = redis.Redis.from_url(redis_url).hgetall(f"moe:ratelimit:7:{int(time.time() // 60)}")
    assert counters == {b"requests": b"2", b"tokens": b"120"}  # the refused request was not counted


async def test_a_new_window_admits_again(redis_url: str) -> None:
    state = SharedState(redis_url)
    await state.start()
    try:
        limiter = RateLimiter(state, window_s=1)
        assert await limiter.admit(7, rpm=1, tpm=None) is None
        refusal = await limiter.admit(7, rpm=1, tpm=None)
        assert refusal is not None and refusal.retry_after_s == 1
        await asyncio.sleep(refusal.retry_after_s)
        assert await limiter.admit(7, rpm=1, tpm=None) is None
    finally:
        await state.stop()


async def test_per_process_counters_limit_while_redis_is_down() -> None:
    fresh_window()
    with tcp_proxy(REDIS_HOST, REDIS_PORT) as proxy:
        state = SharedState(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}")
        await state.start()
        try:
            limiter = RateLimiter(state)
            assert await limiter.admit(7, rpm=2, tpm=50) is None  # counted in Redis
            proxy.down()
            verdicts = [await limiter.admit(7, rpm=2, tpm=50) for _ in range(3)]
            assert not state.redis_ok
            await limiter.add_tokens(8, 50)
            by_tokens = await limiter.admit(8, rpm=None, tpm=50)
        finally:
            await state.stop()
    # Counted again from zero, in this process: two admitted, the third refused.
    assert verdicts[:2] == [None, None] and verdicts[2] is not None and verdicts[2].limit == "requests"
    assert by_tokens is not None and by_tokens.limit == "tokens"


async def test_per_process_counters_without_redis() -> None:
    fresh_window()
    limiter = RateLimiter(SharedState(None))
    verdicts = [await limiter.admit(7, rpm=2, tpm=None) for _ in range(3)]
    assert verdicts[:2] == [None, None] and verdicts[2] is not None and verdicts[2].limit == "requests"
    assert await limiter.admit(7, rpm=None, tpm=None) is None  # a key without limits is never counted


# -- through the gateway ---------------------------------------------------------------------------
def test_requests_per_minute_are_shared_by_two_gateways(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path, redis_url: str
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    settings = {"moe_require_api_key": True, "redis_url": redis_url}
    with running_gateway(config, postgres_url, tmp_path / "a", **settings) as one, \
         running_gateway(config, postgres_url, tmp_path / "b", **settings) as two:
        key = issue_key(postgres_url, rpm_limit=3).key
        fresh_window()
        answered = [ask(sdk(gw, key)).http_response.status_code for gw in (one, two, one)]
        before = time.time()
        with pytest.raises(openai.RateLimitError) as refused:
            ask(sdk(two, key))
        after = time.time()
    assert answered == [200, 200, 200]
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert seconds_left(after) <= int(refused.value.response.headers["retry-after"]) <= seconds_left(before)


def test_tokens_per_minute_count_streamed_and_plain_answers(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path, redis_url: str
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, postgres_url, tmp_path, moe_require_api_key=True, redis_url=redis_url) as gw:
        streamer, plain = issue_key(postgres_url, tpm_limit=10).key, issue_key(postgres_url, tpm_limit=10).key
        fresh_window()
        stream = sdk(gw, streamer).chat.completions.create(
            model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage][0]
        assert usage.total_tokens > 10  # one answer takes the key past its limit...
        with pytest.raises(openai.RateLimitError) as after_stream:
            ask(sdk(gw, streamer))
        assert ask(sdk(gw, plain)).http_response.status_code == 200  # ...and only that key
        with pytest.raises(openai.RateLimitError) as after_plain:
            ask(sdk(gw, plain))
    for refused in (after_stream.value, after_plain.value):
        assert refused.code == "rate_limit_exceeded" and "10 tokens per minute" in refused.message
        assert refused.response.headers["retry-after"].isdigit()


def test_a_gateway_keeps_limiting_while_redis_is_down(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path, redis_url: str
) -> None:
    with tcp_proxy(REDIS_HOST, REDIS_PORT) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}"
        config = routed_config(healthy_experts, router_artifact)
        with running_gateway(config, postgres_url, tmp_path, moe_require_api_key=True, redis_url=url) as gw:
            key = issue_key(postgres_url, rpm_limit=2).key
            proxy.down()
            fresh_window()
            answered = [ask(sdk(gw, key)).http_response.status_code for _ in range(2)]
            with pytest.raises(openai.RateLimitError) as refused:
                ask(sdk(gw, key))
            ready = httpx.get(f"{gw.base_url}/readyz").json()
    assert ready["redis"] == {"configured": True, "reachable": False}
    assert answered == [200, 200]
    assert refused.value.code == "rate_limit_exceeded"
