"""`moe batch run` against the scripted upstream, with the decision log in the real PostgreSQL server.

The upstream is bench/upstream.py's `chat` behind a recorder that keeps the order in which calls
arrive, how often each prompt was answered, and can hold calls to simulate work in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from bench import upstream
from experts.pool import ExpertCall
from gateway.batch.runner import Journal, answer_line, journal_path
from gateway.cli import app as cli
from gateway.decisions.record import DecisionRecord
from gateway.migrate import upgrade
from routers.base import Router
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, decisions, expert, wait_for
from tests.gateway.test_failures import REST, STEM

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """bench/upstream.py's chat, recording arrivals (model, prompt) and answers; can hold calls after the first N."""

    def __init__(self, answer_first: int | None = None) -> None:
        self.arrivals: list[tuple[str, str]] = []
        self.answered: Counter[str] = Counter()  # answers sent to a client still connected
        self.abandoned: list[str] = []  # held calls whose client hung up
        self.holding = 0
        self.answer_first = answer_first  # None: answer everything
        self.events: list[tuple[str, str]] = []  # ("route", prompt) and ("call", prompt), shared with the router
        self._admitted = 0

    def release(self) -> None:
        self.answer_first = None

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.arrivals.append((body["model"], prompt))
        self.events.append(("call", prompt))
        self._admitted += 1
        if self.answer_first is not None and self._admitted > self.answer_first:
            self.holding += 1
            try:
                while self.answer_first is not None:
                    if await request.is_disconnected():
                        self.abandoned.append(prompt)
                        return Response(status_code=499)
                    await asyncio.sleep(0.02)
            finally:
                self.holding -= 1
        response = await upstream.chat(request)  # request.json() is cached: the same body
        self.answered[prompt] += 1
        return response

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                 Route("/v1/models", upstream.models)])


@contextmanager
def recording_upstream(answer_first: int | None = None) -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder(answer_first)
    with upstream.serve_in_thread(recorder.app()) as base:
        yield recorder, f"{base}/v1"


def write_config(path: Path, experts: list[dict[str, Any]], artifact: Path | None = None) -> Path:
    config: dict[str, Any] = {"experts": experts}
    if artifact is not None:
        config["routers"] = [{"name": "embedding", "artifact": str(artifact)}]
        config["virtual_models"] = [{"name": "moe-auto", "router": "embedding"}]
    path.write_text(yaml.safe_dump(config))
    return path


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def envelope(custom_id: str, model: str, prompt: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}]}}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def batch_env(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """DATABASE_URL on the real PostgreSQL server, migrated; also set in this process for the in-process CLI."""
    upgrade(postgres_url)
    env = {"DATABASE_URL": postgres_url, "MOE_SPILL_DIR": str(tmp_path / "spill"), "MOE_LOG_FLUSH_S": "0.05"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run_cli(*args: str | Path) -> None:
    result = CliRunner().invoke(cli, ["batch", "run", *map(str, args)])
    assert result.exit_code == 0, result.output


def test_routes_all_first_keeps_input_order_and_groups_each_experts_calls(
    batch_env: dict[str, str], postgres_url: str, router_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with recording_upstream() as (recorder, v1):
        decide_many = Router.decide_many

        def logged_decide_many(self: Router, queries: Any) -> Any:
            recorder.events.extend(("route", messages[-1]["content"]) for messages, _ in queries)
            return decide_many(self, queries)

        monkeypatch.setattr(Router, "decide_many", logged_decide_many)
        config = write_config(tmp_path / "config.yaml", [
            expert("stem", "echo-stem", v1, domains=STEM[:2]),
            expert("humanities", "echo-humanities", v1, domains=["history", "philosophy", "law"]),
            expert("general", "echo-general", v1, domains=STEM[2:] + [d for d in REST if d not in ("history", "philosophy", "law")]),
        ], router_artifact)
        # Interleaved: routed maths, routed history, a direct call to `general`, some as bare bodies.
        lines: list[Any] = []
        for i in range(8):
            lines.append(envelope(f"math-{i}", "moe-auto", f"{MATH_QUESTION} (#{i})"))
            lines.append({"model": "moe-auto", "messages": [{"role": "user", "content": f"{HISTORY_QUESTION} (#{i})"}]})
            lines.append(envelope(f"direct-{i}", "general", f"Say hello (#{i})"))
        source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
        run_cli(source, out, "--config", config, "--concurrency", "3")

    results = read_jsonl(out)
    expected_ids = [line.get("custom_id", f"line-{n}") for n, line in enumerate(lines, start=1)]
    assert [r["custom_id"] for r in results] == expected_ids
    prompts = [line.get("body", line)["messages"][0]["content"] for line in lines]
    for result, prompt in zip(results, prompts, strict=True):
        body = result["response"]["body"]
        assert result["response"]["status_code"] == 200 and result["error"] is None
        assert body["choices"][0]["message"]["content"] == f"[echo-{body['model']}] {prompt}"
    # Routing quality is not the point here (the small router's history answers vary): the maths goes to stem and
    # the direct calls to general, so at least two experts' calls could interleave.
    assert {r["response"]["body"]["model"] for r in results[0::3]} == {"stem"}
    assert {r["response"]["body"]["model"] for r in results[2::3]} == {"general"}

    # Every routing decision came before the first expert call.
    kinds = [kind for kind, _ in recorder.events]
    assert kinds.count("route") == 16 and kinds.index("call") == 16
    # Each expert's calls arrived as one contiguous group, each prompt once.
    runs = [model for model, _ in groupby(model for model, _ in recorder.arrivals)]
    assert len(runs) == len(set(runs)) >= 2, runs
    assert sorted(prompt for _, prompt in recorder.arrivals) == sorted(prompts)

    # One decision record per request, as the gateway writes them, its id in the output line.
    wait_for(lambda: len(decisions(postgres_url)) == 24, what="24 decision records")
    records = {r.id: r for r in decisions(postgres_url)}
    for result in results:
        record = records[result["response"]["request_id"]]
        assert record.chosen_expert == result["response"]["body"]["model"] and record.status == "ok"
        assert [(c.expert, c.status) for c in record.calls] == [(record.chosen_expert, "ok")]
        assert (record.router == "embedding-domain") == (record.requested_model == "moe-auto")


def test_fallbacks_go_to_the_next_ranked_expert_in_a_later_grouped_round(
    batch_env: dict[str, str], postgres_url: str, router_artifact: Path, tmp_path: Path
) -> None:
    with recording_upstream() as (recorder, v1):
        config = write_config(tmp_path / "config.yaml", [
            expert("stem", "fail500-stem", v1, domains=STEM),
            expert("general", "echo-general", v1, domains=REST),
        ], router_artifact)
        lines = [envelope(f"q-{i}", "moe-auto", f"{MATH_QUESTION if i % 2 else HISTORY_QUESTION} (#{i})")
                 for i in range(8)]
        source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
        run_cli(source, out, "--config", config)

    results = read_jsonl(out)
    assert [r["custom_id"] for r in results] == [f"q-{i}" for i in range(8)]
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["model"] == "general" for r in results)
    # Round one: the failing stem's four maths questions together, then general's four; round two: the fallbacks.
    models = [model for model, _ in recorder.arrivals]
    assert models == ["fail500-stem"] * 4 + ["echo-general"] * 8
    fallbacks = [prompt for _, prompt in recorder.arrivals[8:]]
    assert sorted(fallbacks) == sorted(prompt for _, prompt in recorder.arrivals[:4])
    wait_for(lambda: len(decisions(postgres_url)) == 8, what="8 decision records")
    calls = Counter(tuple((c.expert, c.status) for c in r.calls) for r in decisions(postgres_url))
    assert calls == {(("stem", "upstream_5xx"), ("general", "ok")): 4, (("general", "ok"),): 4}


def test_bad_lines_get_their_own_error_and_the_rest_is_answered(batch_env: dict[str, str], postgres_url: str,
                                                                tmp_path: Path) -> None:
    with recording_upstream() as (recorder, v1):
        config = write_config(tmp_path / "config.yaml", [
            expert("alpha", "echo-alpha", v1), expert("broken", "fail500-broken", v1)])
        lines: list[Any] = [
            envelope("good", "alpha", "first"),
            "this is not json",
            "[1, 2, 3]",
            {**envelope("wrong-url", "alpha", "x"), "url": "/v1/embeddings"},
            {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "alpha"}},
            {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
            envelope("good", "alpha", "a second line with the same custom_id"),
            {"model": "alpha", "messages": [{"role": "user", "content": "bare"}], "temperature": 9},
            envelope("fails", "broken", "the expert answers 500"),
            "",  # blank lines are skipped
            {"model": "alpha", "messages": [{"role": "user", "content": "last"}]},
        ]
        source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
        run_cli(source, out, "--config", config)

    results = read_jsonl(out)
    assert [r["custom_id"] for r in results] == [
        "good", None, None, "wrong-url", "no-messages", "line-6", "good", "line-8", "fails", "line-11"]
    errors = [(r["error"] or {}).get("code") for r in results]
    assert errors == [None, "invalid_json", "invalid_line", "unsupported_url", None, None, "duplicate_custom_id",
                      None, None, None]
    assert [r["error"]["line"] for r in results if r["error"]] == [2, 3, 4, 7]
    statuses = [r["response"]["status_code"] if r["response"] else None for r in results]
    assert statuses == [200, None, None, None, 400, 404, None, 400, 502, 200]
    assert results[4]["response"]["body"]["error"]["param"] == "messages"
    assert results[5]["response"]["body"]["error"]["code"] == "model_not_found"
    assert results[7]["response"]["body"]["error"]["param"] == "temperature"
    assert results[8]["response"]["body"]["error"]["code"] == "experts_unavailable"
    assert results[9]["response"]["body"]["choices"][0]["message"]["content"] == "[echo-alpha] last"
    assert sorted(p for _, p in recorder.arrivals) == ["first", "last", "the expert answers 500"]
    # Lines that reached an expert have records; the failed one with its failed call.
    wait_for(lambda: len(decisions(postgres_url)) == 3, what="3 decision records")
    failed = next(r for r in decisions(postgres_url) if r.status != "ok")
    assert failed.http_status == 502 and [(c.expert, c.status) for c in failed.calls] == [("broken", "upstream_5xx")]


def test_experts_on_different_servers_are_sent_in_parallel(batch_env: dict[str, str], tmp_path: Path) -> None:
    """Grouping is per server: `a` on one server must not wait for `b`'s group on another."""
    b_arrived = threading.Event()
    a_saw_b: list[bool] = []

    async def chat_a(request: Request) -> Response:
        a_saw_b.append(await asyncio.to_thread(b_arrived.wait, 10))
        return await upstream.chat(request)

    async def chat_b(request: Request) -> Response:
        b_arrived.set()
        return await upstream.chat(request)

    def server(chat: Any) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", upstream.models)])

    with upstream.serve_in_thread(server(chat_a)) as base_a, upstream.serve_in_thread(server(chat_b)) as base_b:
        config = write_config(tmp_path / "config.yaml", [
            expert("a", "echo-a", f"{base_a}/v1"), expert("b", "echo-b", f"{base_b}/v1")])
        lines = [envelope(f"{name}-{i}", name, f"{name} {i}") for i in range(2) for name in ("a", "b")]
        source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
        run_cli(source, out, "--config", config)
    assert a_saw_b == [True, True]
    assert [r["response"]["status_code"] for r in read_jsonl(out)] == [200] * 4


def test_sigkill_then_rerun_sends_only_unfinished_requests(batch_env: dict[str, str], postgres_url: str,
                                                          tmp_path: Path) -> None:
    # The first run gets 6 answers; the next 2 calls (concurrency 2) are held until it is killed.
    with recording_upstream(answer_first=6) as (recorder, v1):
        config = write_config(tmp_path / "config.yaml", [expert("alpha", "echo-alpha", v1), expert("beta", "echo-beta", v1)])
        lines = [envelope(f"req-{i}", "alpha" if i % 2 else "beta", f"question {i}") for i in range(20)]
        source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
        journal = out.with_name("out.jsonl.partial")
        command = [sys.executable, "-m", "gateway.cli", "batch", "run", str(source), str(out),
                   "--config", str(config), "--concurrency", "2"]
        env = {**os.environ, **batch_env}
        with (tmp_path / "first.log").open("w") as log:
            first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                # header + 6 entries journaled, and 2 calls in flight
                wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) == 7 and recorder.holding == 2,
                         timeout_s=90, what="6 answers journaled and 2 calls in flight")
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()
        wait_for(lambda: len(recorder.abandoned) == 2, what="the held calls to notice the kill")
        answered_before = set(recorder.answered)
        in_flight = set(recorder.abandoned)
        assert not out.exists() and len(answered_before) == 6
        recorder.release()
        rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    prompts = [f"question {i}" for i in range(20)]
    sent = Counter(prompt for _, prompt in recorder.arrivals)
    # Answered before the kill: never sent again. In flight at the kill: sent once more. Every prompt answered once.
    assert all(sent[p] == 1 for p in answered_before)
    assert all(sent[p] == 2 for p in in_flight)
    assert sum(sent.values()) == 22 and set(sent) == set(prompts)
    assert recorder.answered == Counter(prompts)

    results = read_jsonl(out)
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(20)]
    for i, result in enumerate(results):
        assert result["response"]["body"]["choices"][0]["message"]["content"] == \
            f"[echo-{'alpha' if i % 2 else 'beta'}] question {i}"
    assert not journal.exists()
    # Exactly one record per request: the killed run's records are re-recorded from the journal, idempotently.
    wait_for(lambda: len(decisions(postgres_url)) == 20, what="20 decision records")
    assert {r.id for r in decisions(postgres_url)} == {r["response"]["request_id"] for r in results}
    assert all([c.status for c in r.calls] == ["ok"] for r in decisions(postgres_url))


def test_a_torn_last_journal_line_is_dropped_and_its_request_sent(batch_env: dict[str, str], tmp_path: Path) -> None:
    """A kill in the middle of a journal write leaves a line without its newline: that request was not finished."""
    with recording_upstream() as (recorder, v1):
        config = write_config(tmp_path / "config.yaml", [expert("alpha", "echo-alpha", v1)])
        source = write_lines(tmp_path / "in.jsonl", [envelope(f"r{i}", "alpha", f"prompt {i}") for i in range(3)])
        out = tmp_path / "out.jsonl"
        fingerprint = hashlib.sha256(source.read_bytes()).hexdigest()
        journal = Journal(journal_path(out), fingerprint)
        journal.append(1, answer_line("r0", "from-the-first-run", 200, {"model": "alpha", "answered": "earlier"}), None)
        journal.close()
        with journal_path(out).open("a") as fh:
            fh.write('{"line": 2, "output": {"id": "batch_req_x", "cust')
        Journal(journal_path(out), fingerprint).close()  # reopening drops the torn fragment
        assert len(journal_path(out).read_text().splitlines()) == 2 and journal_path(out).read_text().endswith("\n")
        run_cli(source, out, "--config", config)
    assert sorted(prompt for _, prompt in recorder.arrivals) == ["prompt 1", "prompt 2"]
    results = read_jsonl(out)
    assert results[0]["response"]["body"] == {"model": "alpha", "answered": "earlier"}
    assert [r["response"]["status_code"] for r in results] == [200, 200, 200]


def test_a_rerun_records_the_decisions_a_killed_run_journaled_but_never_wrote(
    batch_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    """A run killed after journaling an answer but before its decision log flushed: the record lives only in
    the journal, and the rerun writes it (the SIGKILL test's flush interval writes them before the kill)."""
    with recording_upstream() as (recorder, v1):
        config = write_config(tmp_path / "config.yaml", [expert("alpha", "echo-alpha", v1)])
        source = write_lines(tmp_path / "in.jsonl", [envelope(f"r{i}", "alpha", f"prompt {i}") for i in range(3)])
        out = tmp_path / "out.jsonl"
        started = datetime.now(UTC)
        killed = DecisionRecord(requested_model="alpha", request_hash="0" * 64, stream=False, chosen_expert="alpha",
                                status="ok", prompt_tokens=3, completion_tokens=4,
                                calls=[ExpertCall(1, "alpha", started, "ok", 12.5, None, None, 3, 4)])
        journal = Journal(journal_path(out), hashlib.sha256(source.read_bytes()).hexdigest())
        journal.append(1, answer_line("r0", killed.id, 200, {"model": "alpha", "answered": "before the kill"}), killed)
        journal.close()
        run_cli(source, out, "--config", config)
    assert sorted(prompt for _, prompt in recorder.arrivals) == ["prompt 1", "prompt 2"]
    results = read_jsonl(out)
    assert results[0]["response"]["request_id"] == killed.id
    wait_for(lambda: len(decisions(postgres_url)) == 3, what="3 decision records")
    by_id = {r.id: r for r in decisions(postgres_url)}
    assert set(by_id) == {r["response"]["request_id"] for r in results}
    restored = by_id[killed.id]
    assert (restored.chosen_expert, restored.status, restored.prompt_tokens, restored.completion_tokens) == (
        "alpha", "ok", 3, 4)
    assert [(c.attempt, c.expert, c.status, c.latency_ms) for c in restored.calls] == [(1, "alpha", "ok", 12.5)]


def test_refuses_a_journal_of_another_input_and_an_existing_output(batch_env: dict[str, str], tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"model": "x", "messages": [{"role": "user", "content": "x"}]}])
    config = write_config(tmp_path / "config.yaml", [expert("alpha", "echo-alpha", "http://127.0.0.1:9/v1")])
    out = tmp_path / "out.jsonl"
    out.with_name("out.jsonl.partial").write_text(json.dumps({"input_sha256": "another input"}) + "\n")
    def refused() -> str:
        result = CliRunner().invoke(cli, ["batch", "run", str(source), str(out), "--config", str(config)])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())  # rich wraps long lines

    assert "belongs to another input file" in refused()
    out.with_name("out.jsonl.partial").unlink()
    out.write_text("earlier results\n")
    assert "already exists" in refused()
    assert out.read_text() == "earlier results\n"


@pytest.mark.parametrize("mode", ["synthesis", "vote", "cascade"])
def test_models_answering_with_several_experts_are_refused(
    mode: str, batch_env: dict[str, str], router_artifact: Path, tmp_path: Path
) -> None:
    with recording_upstream() as (recorder, v1):
        experts = [expert(name, f"echo-{name}", v1) for name in ("stem", "humanities", "general")]
        config = write_config(tmp_path / "config.yaml", experts, router_artifact)
        raw = yaml.safe_load(config.read_text())
        raw["virtual_models"].append({"name": "moe-many", "router": "embedding", mode: {}})
        config.write_text(yaml.safe_dump(raw))
        source = write_lines(tmp_path / "in.jsonl", [envelope("many", "moe-many", MATH_QUESTION),
                                                      envelope("one", "moe-auto", MATH_QUESTION)])
        run_cli(source, tmp_path / "out.jsonl", "--config", config)

    many, one = read_jsonl(tmp_path / "out.jsonl")
    assert many["response"]["status_code"] == 400
    assert many["response"]["body"]["error"]["code"] == "unsupported_in_batch"
    assert one["response"]["status_code"] == 200
    assert len(recorder.arrivals) == 1  # only the single-expert request reached an expert
