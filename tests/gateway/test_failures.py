"""Failure injection: upstream 5xx, 4xx, timeouts, refused connections, broken streams, clients hanging up.

The failing expert declares the maths domains, so the router ranks it first for a maths question
and the gateway must fall back to the next-ranked healthy expert. Every case leaves one record.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.upstream import SLOW_S, app, models, serve_in_thread
from tests.gateway.support import MATH_QUESTION, decisions, expert, routed_config, running_gateway, wait_for

STEM = ["math", "physics", "chemistry", "engineering", "computer science"]
REST = ["history", "philosophy", "law", "psychology", "business", "economics", "health", "biology", "other"]


def experts_with_failing_stem(upstream: str, model: str, **extra: Any) -> list[dict[str, Any]]:
    return [
        expert("stem", model, f"{upstream}/v1", domains=STEM, **extra),
        expert("general", "echo-general", f"{upstream}/v1", domains=REST),
    ]


def ask(gateway_v1: str, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=gateway_v1, api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], **kwargs
    )


def only_record(url: str) -> Any:
    wait_for(lambda: len(decisions(url)) == 1, what="one decision record")
    return decisions(url)[0]


@pytest.mark.parametrize(("model", "kind", "extra"), [("fail500", "upstream_5xx", {}), ("slow", "timeout", {"timeout_s": 0.5})])
def test_falls_back_to_next_ranked(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path,
                                   model: str, kind: str, extra: dict[str, Any]) -> None:
    config = routed_config(experts_with_failing_stem(upstream, model, **extra), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        raw = ask(gw.v1)
        metrics = httpx.get(f"{gw.base_url}/metrics").text
    assert f'llm_expert_call_errors_total{{expert="stem",kind="{kind}"}} 1.0' in metrics
    assert 'llm_model_fallbacks_total{router="embedding-domain",virtual_model="moe-auto"} 1.0' in metrics
    assert 'llm_model_requests_total{expert="general",router="embedding-domain",status="ok",virtual_model="moe-auto"} 1.0' in metrics
    assert raw.headers["x-moe-expert"] == "general"
    assert raw.parse().choices[0].message.content == f"[echo-general] {MATH_QUESTION}"
    record = only_record(sqlite_url)
    assert record.status == "ok" and record.chosen_expert == "general"
    assert record.ranked[0]["expert"] == "stem"
    assert [(c.expert, c.status) for c in record.calls] == [("stem", kind), ("general", "ok")]


def test_stream_falls_back_before_the_first_byte(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    config = routed_config(experts_with_failing_stem(upstream, "fail500"), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
            model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True
        ) as response:
            assert response.headers["x-moe-expert"] == "general"
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == f"[echo-general] {MATH_QUESTION}"
    record = only_record(sqlite_url)
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "upstream_5xx"), ("general", "ok")]


def test_refused_connection_falls_back(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        with serve_in_thread(app) as doomed:
            experts = [
                expert("stem", "echo-stem", f"{doomed}/v1", domains=STEM, connect_retries=2),
                expert("general", "echo-general", f"{upstream}/v1", domains=REST),
            ]
            config = routed_config(experts, router_artifact)
            gw = stack.enter_context(running_gateway(config, sqlite_url, tmp_path, moe_health_interval_s=60))
        # The stem expert's server is gone now, though the last health probe saw it up.
        raw = ask(gw.v1)
    assert raw.headers["x-moe-expert"] == "general"
    record = only_record(sqlite_url)
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "refused"), ("general", "ok")]


async def _request_timeout(_: Request) -> Response:
    return JSONResponse({"error": {"message": "the server gave up waiting for the request", "type": "timeout"}},
                        status_code=408)


def test_an_upstream_408_falls_back(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    """408 Request Timeout is the server's failure, not the request's: unlike other 4xx it falls back."""
    giving_up = Starlette(routes=[Route("/v1/chat/completions", _request_timeout, methods=["POST"]),
                                  Route("/v1/models", models)])
    with serve_in_thread(giving_up) as base:
        experts = [expert("stem", "echo-stem", f"{base}/v1", domains=STEM),
                   expert("general", "echo-general", f"{upstream}/v1", domains=REST)]
        with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
            raw = ask(gw.v1)
    assert raw.headers["x-moe-expert"] == "general"
    assert raw.parse().choices[0].message.content == f"[echo-general] {MATH_QUESTION}"
    record = only_record(sqlite_url)
    assert record.status == "ok" and record.ranked[0]["expert"] == "stem"
    [(first, kind), second] = [(c.expert, c.status) for c in record.calls]
    assert first == "stem" and kind != "upstream_4xx" and second == ("general", "ok")


def test_upstream_4xx_goes_back_to_the_client_without_fallback(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    config = routed_config(experts_with_failing_stem(upstream, "reject400"), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw, pytest.raises(openai.BadRequestError) as info:
        ask(gw.v1)
    assert info.value.code == "upstream_rejected"
    record = only_record(sqlite_url)
    assert record.status == "error" and record.http_status == 400
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "upstream_4xx")]


@pytest.mark.parametrize(("model", "status", "extra"), [("fail500", 502, {}), ("slow", 504, {"timeout_s": 0.3})])
def test_every_expert_failing_is_an_openai_error(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path,
                                                 model: str, status: int, extra: dict[str, Any]) -> None:
    experts = [expert(name, model, f"{upstream}/v1", domains=d, **extra) for name, d in (("stem", STEM), ("general", REST))]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        response = httpx.post(f"{gw.v1}/chat/completions", timeout=10,
                              json={"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]})
    assert response.status_code == status
    assert response.json()["error"]["code"] == "experts_unavailable"
    assert response.headers["x-moe-decision-id"]
    record = only_record(sqlite_url)
    assert record.status == "error" and record.http_status == status and len(record.calls) == 2


def test_broken_stream_ends_with_an_error_event(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    config = routed_config(experts_with_failing_stem(upstream, "broken"), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True
        )
        received: list[str] = []
        with pytest.raises(openai.APIError, match="mid-stream"):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "[broken] Solve"  # what arrived before the cut
    record = only_record(sqlite_url)
    assert record.status == "stream_error" and record.http_status == 502
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "broken_stream")]


def test_client_disconnect_cancels_the_upstream_call(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    config = routed_config(experts_with_failing_stem(upstream, "slow", timeout_s=30), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            # Long enough for routing on a busy machine, well short of the upstream's SLOW_S.
            httpx.post(f"{gw.v1}/chat/completions", timeout=httpx.Timeout(10, read=SLOW_S / 2),
                       json={"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]})
        record = only_record(sqlite_url)
    assert record.status == "client_disconnected"
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "cancelled")]
    # Recorded as soon as the client left, not when the slow upstream would have answered.
    assert record.calls[0].latency_ms < SLOW_S * 1000 and time.monotonic() - started < SLOW_S


def test_client_disconnect_mid_stream(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    config = routed_config(experts_with_failing_stem(upstream, "drip"), router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        body = {"model": "moe-auto", "stream": True, "messages": [{"role": "user", "content": MATH_QUESTION}]}
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=10) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first_events = [next(lines) for _ in range(3)]
        assert first_events[0].startswith("data: ")
        record = only_record(sqlite_url)
    assert record.status == "client_disconnected" and record.stream
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "cancelled")]
    assert record.ttft_ms is not None


def test_overload_is_a_paced_429(upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    """Past the in-flight bound the gateway refuses at once, OpenAI-shaped, with Retry-After."""
    import concurrent.futures

    config = routed_config(experts_with_failing_stem(upstream, "drip"), router_artifact)
    body = {"model": "moe-auto", "stream": True, "messages": [{"role": "user", "content": MATH_QUESTION}]}
    with running_gateway(config, sqlite_url, tmp_path, moe_max_in_flight=2) as gw:

        def slow_stream() -> int:
            with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30) as response:
                for _ in response.iter_lines():
                    pass
                return response.status_code

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            holders = [pool.submit(slow_stream) for _ in range(2)]
            wait_for(lambda: _in_flight(gw) == 2, what="two streams in flight")
            refused = httpx.post(f"{gw.v1}/chat/completions", json={**body, "stream": False}, timeout=10)
            assert [h.result() for h in holders] == [200, 200]
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        # Slots are released when streams end: a new request is served again.
        assert httpx.post(f"{gw.v1}/chat/completions", json={**body, "stream": False}, timeout=30).status_code == 200


def _in_flight(gw: Any) -> int:
    ready = httpx.get(f"{gw.base_url}/readyz", timeout=5).json()
    return ready["in_flight"]
