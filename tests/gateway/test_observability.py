"""Structured logs from a real `moe serve` process, and OpenTelemetry spans when tracing is switched on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bench.upstream import DRIP_S, free_port, serve_in_thread
from gateway.app import create_app
from gateway.migrate import upgrade
from gateway.settings import Settings
from tests.gateway.support import MATH_QUESTION, expert, routed_config, wait_for
from tests.gateway.test_failures import REST, STEM
from tests.gateway.test_shutdown import ROOT, moe_serve

SECRET_KEY = f"sk-observability-{uuid.uuid4().hex}"


def failing_stem(upstream: str, general_model: str = "echo-general") -> list[dict[str, Any]]:
    """The maths question is routed to `stem`, which answers 500, so `general` answers it."""
    return [expert("stem", "fail500", f"{upstream}/v1", domains=STEM),
            expert("general", general_model, f"{upstream}/v1", domains=REST)]


def ask(v1: str, *, stream: bool = False) -> str:
    """One chat request with the openai SDK, sending an API key; returns the decision id."""
    client = openai.OpenAI(base_url=v1, api_key=SECRET_KEY, max_retries=0)
    messages = [{"role": "user", "content": MATH_QUESTION}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages)
        return raw.headers["x-moe-decision-id"]
    with client.chat.completions.with_streaming_response.create(model="moe-auto", messages=messages,
                                                                stream=True) as response:
        for _ in response.parse():
            pass
        return response.headers["x-moe-decision-id"]


# -- logs -----------------------------------------------------------------------------------------

def test_json_logs_with_one_access_line_per_request_and_no_prompt_or_key(
    upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    with moe_serve(failing_stem(upstream), router_artifact, tmp_path, sqlite_url, MOE_LOG_FORMAT="json") as gw:
        ids = [ask(gw.v1), ask(gw.v1, stream=True)]
        wait_for(lambda: len(_access_lines(gw.stderr())) == 2, what="an access line per request")
        httpx.post(f"{gw.v1}/chat/completions", json={"model": "moe-auto"}, timeout=10)  # rejected: no record
        stderr, stdout = gw.stderr(), gw.stdout()
    # transformers' progress bar while loading the router's encoder is the one line that is not a log record.
    lines = [line for line in stderr.splitlines() if line.strip() and "Loading weights" not in line]
    records = [json.loads(line) for line in lines]  # every log line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(datetime.fromisoformat(r["time"]).utcoffset() is not None for r in records)
    assert {"logger": "uvicorn.error", "level": "INFO", "message": "Application startup complete."}.items() <= \
        next(r for r in records if r["message"] == "Application startup complete.").items()
    access = _access_lines(stderr)
    assert [a["decision_id"] for a in access] == ids
    for line, streamed in zip(access, (False, True), strict=True):
        assert line["level"] == "INFO" and line["stream"] is streamed
        assert line["virtual_model"] == "moe-auto" and line["router"].startswith("embedding-domain@")
        assert line["expert"] == "general" and line["status"] == "ok" and line["http_status"] == 200
        assert line["latency_ms"] >= line["routing_ms"] > 0
        assert [(c["expert"], c["status"]) for c in line["calls"]] == [("stem", "upstream_5xx"), ("general", "ok")]
    # Neither the prompt (any part of it) nor the caller's key appears anywhere the process wrote.
    for output in (stderr, stdout):
        assert SECRET_KEY not in output and "Bearer" not in output
        assert "3x + 7 = 22" not in output and "Solve for x" not in output


def _access_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if '"logger": "gateway.access"' in line]


def test_text_log_format() -> None:
    """MOE_LOG_FORMAT=text: the same loggers, one readable line each (checked in a fresh process)."""
    script = (
        "import logging, logging.config\n"
        "from gateway.observability.logs import logging_config\n"
        "logging.config.dictConfig(logging_config('text'))\n"
        "logging.getLogger('uvicorn.error').info('Application startup complete.')\n"
        "logging.getLogger('gateway.access').info('chat %s', 'moe-auto', extra={'decision_id': 'd1'})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" INFO uvicorn.error: Application startup complete.")
    assert lines[1].endswith(" INFO gateway.access: chat moe-auto")


# -- tracing --------------------------------------------------------------------------------------

def test_spans_for_the_request_its_routing_and_each_expert_call(
    upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    config = routed_config(failing_stem(upstream, general_model="drip-general"), router_artifact)
    upgrade(sqlite_url)
    settings = Settings(database_url=sqlite_url, moe_spill_dir=tmp_path / "spill", moe_otel=True)
    with serve_in_thread(create_app(settings, config, span_exporter=exporter), port=free_port()) as base:
        for probe in ("/healthz", "/readyz", "/metrics"):
            httpx.get(f"{base}{probe}", timeout=10)
        ids = [ask(f"{base}/v1"), ask(f"{base}/v1", stream=True)]
    # Leaving the block ran the lifespan's shutdown, which exported every queued span.
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(["POST /v1/chat/completions"] * 2 + ["moe.route"] * 2
                                                   + ["moe.expert_call"] * 4)  # no probes, no per-chunk spans
    for decision_id, streamed in zip(ids, (False, True), strict=True):
        [server] = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes["moe.decision_id"] == decision_id]
        children = sorted((s for s in spans if s.parent and s.parent.span_id == server.context.span_id),
                          key=lambda s: s.start_time)
        assert [s.name for s in children] == ["moe.route", "moe.expert_call", "moe.expert_call"]
        assert all(s.context.trace_id == server.context.trace_id for s in children)
        route, failed, answered = children
        for span in children:
            assert span.attributes["moe.virtual_model"] == "moe-auto"
            assert span.attributes["moe.router"].startswith("embedding-domain@")
            assert server.start_time <= span.start_time <= span.end_time <= server.end_time
        assert route.attributes["moe.ranked"][0] == "stem" and route.end_time <= failed.start_time
        assert (failed.attributes["moe.expert"], failed.attributes["moe.status"]) == ("stem", "upstream_5xx")
        assert failed.status.status_code == StatusCode.ERROR
        assert (answered.attributes["moe.expert"], answered.attributes["moe.status"]) == ("general", "ok")
        assert answered.status.status_code == StatusCode.UNSET
        assert (server.attributes["moe.expert"], server.attributes["moe.status"]) == ("general", "ok")
        if streamed:  # the expert's span lasts the whole stream, one word every DRIP_S, not just its first chunk
            words = len(f"[drip-general] {MATH_QUESTION}".split())
            assert (answered.end_time - answered.start_time) / 1e9 >= (words - 1) * DRIP_S
    assert not any(_leaks(span) for span in spans)


def _leaks(span: ReadableSpan) -> bool:
    """Whether a span carries the prompt, the API key or any request header."""
    text = json.dumps({"name": span.name, "attributes": dict(span.attributes or {}),
                       "events": [dict(e.attributes or {}) for e in span.events]}, default=str)
    return any(secret in text for secret in ("3x + 7", SECRET_KEY, "Bearer", "http.request.header"))


def test_tracing_is_off_by_default() -> None:
    settings = Settings()
    assert settings.moe_otel is False
    app = create_app(settings)
    layers, layer = [], app.build_middleware_stack()
    while layer is not None and len(layers) < 50:
        layers.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    assert "ServerErrorMiddleware" in layers and "OpenTelemetryMiddleware" not in layers
