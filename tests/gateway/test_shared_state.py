"""Redis shared state against the real Redis server: response cache, breakers, and a Redis outage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import shared_state
from gateway.shared_state import SharedState
from tests.gateway.servers import throwaway_redis
from tests.gateway.support import (
    MATH_QUESTION,
    REDIS_HOST,
    REDIS_PORT,
    decisions,
    expert,
    fresh_redis_db,
    routed_config,
    running_gateway,
    wait_for,
)
from tests.gateway.tcp_proxy import tcp_proxy
from tests.gateway.test_failures import REST, STEM

REDIS_DB = 9  # a database of its own, emptied per test


@pytest.fixture
def redis_url() -> Iterator[str]:
    with fresh_redis_db(REDIS_DB) as url:
        yield url


def chat(v1: str, question: str = MATH_QUESTION, *, stream: bool = False, **headers: str) -> tuple[httpx.Response, str]:
    body = {"model": "moe-auto", "stream": stream, "messages": [{"role": "user", "content": question}]}
    response = httpx.post(f"{v1}/chat/completions", json=body, headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    if not stream:
        return response, response.json()["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    return response, text


def test_cache_serves_repeats_streamed_or_not(healthy_experts: list[dict[str, Any]], router_artifact: Path,
                                              sqlite_url: str, tmp_path: Path, redis_url: str) -> None:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path, redis_url=redis_url) as gw:
        first, text = chat(gw.v1)
        again, text_again = chat(gw.v1)
        streamed, text_streamed = chat(gw.v1, stream=True)
        skipped, _ = chat(gw.v1, **{"cache-control": "no-cache"})
    assert first.headers["x-moe-cache"] == "miss"
    assert again.headers["x-moe-cache"] == "hit" and streamed.headers["x-moe-cache"] == "hit"
    assert text == text_again == text_streamed == f"[echo-stem|STEM] {MATH_QUESTION}"
    assert "x-moe-cache" not in skipped.headers
    rows = {r.id: r for r in decisions(sqlite_url)}
    hit = rows[again.headers["x-moe-decision-id"]]
    assert hit.cache_hit is True and hit.calls == [] and hit.cost_usd == 0.0 and hit.chosen_expert == "stem"
    assert rows[skipped.headers["x-moe-decision-id"]].cache_hit is None
    assert len(rows[skipped.headers["x-moe-decision-id"]].calls) == 1


def test_a_completed_stream_is_cached_and_a_broken_one_is_not(upstream: str, router_artifact: Path, sqlite_url: str,
                                                               tmp_path: Path, redis_url: str) -> None:
    experts = [expert("stem", "broken", f"{upstream}/v1", domains=STEM),
               expert("general", "echo-general", f"{upstream}/v1", domains=REST)]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path, redis_url=redis_url) as gw:
        for _ in range(2):
            response, _ = chat(gw.v1, stream=True)
            assert response.headers["x-moe-cache"] == "miss"  # the cut stream was never stored
            assert "stream_interrupted" in response.text
        history = "Who was the first emperor of Rome?"
        first, _ = chat(gw.v1, history, stream=True)
        second, text = chat(gw.v1, history)
    assert first.headers["x-moe-cache"] == "miss" and second.headers["x-moe-cache"] == "hit"
    assert text == f"[echo-general] {history}"


def breakers_open(base_url: str) -> dict[str, float]:
    """`llm_expert_breaker_open` per expert, as /metrics says it."""
    families = text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return {s.labels["expert"]: s.value for f in families if f.name == "llm_expert_breaker_open" for s in f.samples}


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
def test_breaker_opens_after_repeated_failures_and_half_opens(upstream: str, router_artifact: Path, sqlite_url: str,
                                                              tmp_path: Path, redis_url: str, shared: bool) -> None:
    experts = [expert("stem", "fail500", f"{upstream}/v1", domains=STEM),
               expert("general", "echo-general", f"{upstream}/v1", domains=REST)]
    settings = {"moe_breaker_threshold": 2, "moe_breaker_cooldown_s": 2.0, "redis_url": redis_url if shared else None}
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path, **settings) as gw:
        gauges = [breakers_open(gw.base_url)]
        ids = [chat(gw.v1, **{"cache-control": "no-store"})[0].headers["x-moe-decision-id"] for _ in range(2)]
        gauges.append(breakers_open(gw.base_url))  # stem's second failure opened its breaker
        ids.append(chat(gw.v1, **{"cache-control": "no-store"})[0].headers["x-moe-decision-id"])
        # The cooldown passes: the gauge drops without a request, and the next request tries stem again (half-open).
        wait_for(lambda: breakers_open(gw.base_url)["stem"] == 0, what="the cooldown to end")
        ids.append(chat(gw.v1, **{"cache-control": "no-store"})[0].headers["x-moe-decision-id"])
        gauges.append(breakers_open(gw.base_url))  # one failure since: below the threshold, still closed
    assert gauges == [{"stem": 0, "general": 0}, {"stem": 1, "general": 0}, {"stem": 0, "general": 0}]
    rows = {r.id: r for r in decisions(sqlite_url)}
    tried = [[c.expert for c in rows[i].calls] for i in ids]
    assert tried == [["stem", "general"], ["stem", "general"], ["general"], ["stem", "general"]]
    assert all(rows[i].chosen_expert == "general" for i in ids)


def test_redis_outage_keeps_serving(healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str,
                                    tmp_path: Path, redis_url: str) -> None:
    with tcp_proxy(REDIS_HOST, REDIS_PORT) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}"
        config = routed_config(healthy_experts, router_artifact)
        with running_gateway(config, sqlite_url, tmp_path, redis_url=url) as gw:
            assert chat(gw.v1)[0].headers["x-moe-cache"] == "miss"
            proxy.down()
            during = [chat(gw.v1)[0] for _ in range(5)]  # served, the cache silently off
            ready = httpx.get(f"{gw.base_url}/readyz").json()
            assert ready["ready"] is True and ready["redis"] == {"configured": True, "reachable": False}
            assert "llm_redis_reachable 0.0" in httpx.get(f"{gw.base_url}/metrics").text
            proxy.up()
            wait_for(lambda: httpx.get(f"{gw.base_url}/readyz").json()["redis"]["reachable"], what="redis back")
            after = chat(gw.v1)[0]
    assert all(r.status_code == 200 and "x-moe-cache" not in r.headers for r in during)  # the cache was off
    assert after.headers["x-moe-cache"] == "hit"  # the entry stored before the outage is still there
    assert len(decisions(sqlite_url)) == 7


async def test_a_redis_restart_is_not_read_as_redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart, each pooled connection fails once ("closed by server"): a fresh one must be tried before
    Redis is called unreachable (which turned the cache off and read 0 in llm_redis_reachable until the next ping)."""
    monkeypatch.setattr(shared_state, "PING_INTERVAL_S", 3600.0)  # only the commands below can change the verdict
    with throwaway_redis() as server:
        state = SharedState(server.url)
        await state.start()
        try:
            await state.cache_put("k", {"answer": 1})
            assert state.redis_ok and await state.cache_get("k") == {"answer": 1}
            server.stop()
            server.start()  # empty again: it keeps nothing on disk
            assert await state.cache_get("k") is None
            assert state.redis_ok
            server.stop()
            assert await state.cache_get("k") is None
            assert not state.redis_ok  # really down is still seen at once
        finally:
            await state.stop()
