"""Graceful shutdown of a real `moe serve` process: on SIGTERM it stops accepting, lets open streams
finish (for up to MOE_DRAIN_S), then flushes the decision log before it exits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from bench.upstream import DRIP_S, free_port
from gateway.migrate import upgrade
from tests.gateway.support import MATH_QUESTION, decisions, expert, wait_for
from tests.gateway.test_failures import REST, STEM

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    stderr_path: Path
    stdout_path: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


@contextmanager
def moe_serve(experts: list[dict[str, Any]], router_artifact: Path, workdir: Path, database_url: str, *,
              workers: int = 1, **env: str) -> Iterator[ServeProcess]:
    """`moe serve` in a process of its own, configured through its environment as an operator would."""
    config = {
        "experts": experts,
        "routers": [{"name": "embedding", "artifact": str(router_artifact)}],
        "virtual_models": [{"name": "moe-auto", "router": "embedding"}],
    }
    config_path = workdir / "moe.yaml"
    config_path.write_text(yaml.safe_dump(config))
    upgrade(database_url)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_", "OTEL_")) and k != "REDIS_URL"}
    environ |= {"MOE_CONFIG": str(config_path), "DATABASE_URL": database_url, "MOE_SPILL_DIR": str(workdir / "spill"),
                **env}
    port = free_port()
    stdout_path, stderr_path = workdir / "serve.stdout", workdir / "serve.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
            cwd=ROOT, env=environ, stdout=stdout, stderr=stderr,
        )
    served = ServeProcess(process, f"http://127.0.0.1:{port}", stderr_path, stdout_path)
    try:
        # Generous: the process imports torch and loads the router's encoder before it listens.
        wait_for(lambda: _started(served), timeout_s=180, what="`moe serve` to answer /healthz")
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _started(served: ServeProcess) -> bool:
    if served.process.poll() is not None:
        raise AssertionError(f"`moe serve` exited with {served.process.returncode}:\n{served.stderr()[-3000:]}")
    return _accepts(served)


def _accepts(served: ServeProcess) -> bool:
    try:
        return httpx.get(f"{served.base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def drip_experts(upstream: str) -> list[dict[str, Any]]:
    """The maths question goes to `stem`, whose upstream streams one word every DRIP_S."""
    return [expert("stem", "drip-stem", f"{upstream}/v1", domains=STEM),
            expert("general", "echo-general", f"{upstream}/v1", domains=REST)]


def test_sigterm_lets_an_open_stream_finish_then_flushes_its_record(
    upstream: str, router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    # A flush interval longer than the test: the record can only reach the database through shutdown's flush.
    with moe_serve(drip_experts(upstream), router_artifact, tmp_path, postgres_url,
                   MOE_DRAIN_S="30", MOE_LOG_FLUSH_S="600") as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
            model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True
        ) as response:
            decision_id = response.headers["x-moe-decision-id"]
            chunks = iter(response.parse())
            text = [next(chunks).choices[0].delta.content or ""]
            signalled = time.monotonic()
            gw.process.send_signal(signal.SIGTERM)
            wait_for(lambda: not _accepts(gw), timeout_s=5, what="the gateway to stop accepting connections")
            assert gw.process.poll() is None  # still serving the open stream
            text += [c.choices[0].delta.content or "" for c in chunks if c.choices]
        # uvicorn re-raises the signal once shut down, so the exit status says "terminated by SIGTERM".
        assert gw.process.wait(timeout=30) == -signal.SIGTERM
        drained_s = time.monotonic() - signalled
        assert "Traceback" not in gw.stderr()
    assert "".join(text) == f"[drip-stem] {MATH_QUESTION}"  # the whole answer, after SIGTERM
    assert drained_s > len(MATH_QUESTION.split()) * DRIP_S  # the process really waited for the stream
    [record] = decisions(postgres_url)
    assert record.id == decision_id and record.status == "ok" and record.stream
    assert [(c.expert, c.status) for c in record.calls] == [("stem", "ok")]


def test_drain_is_bounded_and_what_it_cuts_is_recorded_as_shutdown(
    upstream: str, router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    question = f"{MATH_QUESTION} Show every step of the working in detail, please. " * 3  # ~40 words: ~12 s of drip
    drain_s = 1.0
    # `slow` declares no domain, so nothing is routed to it; it is asked by name, answering after SLOW_S.
    experts = [*drip_experts(upstream), expert("slow", "slow-general", f"{upstream}/v1")]
    slow = {"model": "slow", "messages": [{"role": "user", "content": MATH_QUESTION}]}
    with moe_serve(experts, router_artifact, tmp_path, postgres_url,
                   MOE_DRAIN_S=str(drain_s), MOE_LOG_FLUSH_S="600") as gw, ThreadPoolExecutor(2) as pool:
        plain = pool.submit(httpx.post, f"{gw.v1}/chat/completions", json=slow, timeout=30)
        streamed_slow = pool.submit(httpx.post, f"{gw.v1}/chat/completions", json={**slow, "stream": True}, timeout=30)
        body = {"model": "moe-auto", "stream": True, "messages": [{"role": "user", "content": question}]}
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30) as response:
            decision_id = response.headers["x-moe-decision-id"]
            lines = response.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))]
            wait_for(lambda: "llm_requests_in_flight 3.0" in httpx.get(f"{gw.base_url}/metrics").text,
                     what="the two requests to `slow` to be in flight too")
            signalled = time.monotonic()
            gw.process.send_signal(signal.SIGTERM)
            events += [line for line in lines if line.startswith("data: ")]
        assert gw.process.wait(timeout=30) == -signal.SIGTERM
        exited_s = time.monotonic() - signalled
    assert exited_s < drain_s + 10  # not the ~12 s the stream wanted
    # The requests to `slow` had no byte yet: each gets a 503 to retry elsewhere, in OpenAI's shape, not a bare 500.
    for cut_off in (plain.result(), streamed_slow.result()):
        assert cut_off.status_code == 503 and cut_off.headers["retry-after"] == "1", cut_off.text
        assert cut_off.json()["error"]["code"] == "shutting_down"
    # The routed stream was cut mid-answer: it ends as a broken stream does, with an error event, then [DONE].
    *answer, error, done = events
    assert json.loads(error.removeprefix("data: "))["error"]["code"] == "shutting_down"
    assert done == "data: [DONE]"
    words = "".join(json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content") or "" for e in answer)
    assert 0 < len(words.split()) < len(question.split())
    # Written by the shutdown flush after the drain cancelled them: the gateway's doing, not the client's (499).
    records = {r.id: r for r in decisions(postgres_url)}
    streamed = records.pop(decision_id)
    assert (streamed.status, streamed.http_status) == ("shutdown", 503)
    assert [(c.expert, c.status) for c in streamed.calls] == [("stem", "cancelled")]
    cut = sorted(records.values(), key=lambda r: r.stream)
    assert [(r.requested_model, r.stream, r.status, r.http_status) for r in cut] == [
        ("slow", False, "shutdown", 503), ("slow", True, "shutdown", 503)]
    assert all([(c.expert, c.status) for c in r.calls] == [("slow", "cancelled")] for r in cut)


def test_serve_with_two_workers(upstream: str, router_artifact: Path, postgres_url: str, tmp_path: Path) -> None:
    """`moe serve --workers 2`: two processes, each with its app built from the environment, behind one port."""
    experts = [expert("stem", "echo-stem", f"{upstream}/v1", domains=STEM),
               expert("general", "echo-general", f"{upstream}/v1", domains=REST)]
    with moe_serve(experts, router_artifact, tmp_path, postgres_url, workers=2) as gw:
        wait_for(lambda: gw.stderr().count("Application startup complete.") == 2, timeout_s=180,
                 what="both workers to start")
        assert httpx.get(f"{gw.base_url}/healthz", timeout=10).json() == {"status": "ok"}
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        answers = [client.chat.completions.with_raw_response.create(
            model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}]) for _ in range(4)]
        wait_for(lambda: len(decisions(postgres_url)) == len(answers), what="a decision record per request")
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(timeout=60) == 0  # the supervisor stops its workers, then exits
        stderr = gw.stderr()
    workers = set(re.findall(r"Started server process \[(\d+)\]", stderr))
    assert len(workers) == 2 and str(gw.process.pid) not in workers
    # Each worker logs through the gateway's JSON handler. These experts are OpenAI-compatible, called natively:
    # litellm is never loaded, so none of its lines (in its own format or any) appear.
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {r["logger"] for r in records} >= {"uvicorn.error", "gateway.access"}
    assert "LiteLLM" not in stderr
    assert "Traceback" not in stderr
    for answer in answers:
        assert answer.headers["x-moe-expert"] == "stem"
        assert answer.parse().choices[0].message.content == f"[echo-stem] {MATH_QUESTION}"
