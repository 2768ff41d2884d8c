"""Outages of real servers while a running gateway is under load from several openai-SDK clients.

The PostgreSQL and Redis tests stop and restart throwaway servers of their own (tests/gateway/servers.py), never
the machine's.
Covered elsewhere, with the scripted upstream: a slow expert's per-expert timeout and fallback
(test_failures.py::test_falls_back_to_next_ranked[slow-...], ...every_expert_failing...[slow-...]),
clients hanging up mid-stream (test_failures.py::test_client_disconnect_mid_stream) and non-UTF-8
bodies (test_bad_requests.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from bench.upstream import free_port
from tests.gateway.servers import throwaway_postgres, throwaway_redis
from tests.gateway.support import (
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    routed_config,
    running_gateway,
    wait_for,
)
from tests.gateway.test_failures import REST, STEM
from tests.gateway.test_shutdown import ROOT

CLIENTS = 4


# -- load ---------------------------------------------------------------------------------------

@dataclass
class Load:
    """What the clients saw: (decision id, expert) per answer, and every exception."""

    answered: list[tuple[str, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.answered) + len(self.errors)

    def wait_for_answers(self, more: int, *, since: int | None = None, timeout_s: float = 30.0,
                         what: str = "answers") -> None:
        """Wait for `more` answers after the `since`-th (default: from now)."""
        target = (len(self.answered) if since is None else since) + more
        wait_for(lambda: len(self.answered) >= target, timeout_s=timeout_s, what=f"{more} more {what}")


@contextmanager
def under_load(v1: str, *, clients: int = CLIENTS, streams: bool = True, max_s: float = 120.0) -> Iterator[Load]:
    """Clients asking the maths question back to back until the block ends, alternating plain and streamed
    requests unless `streams` is off."""
    load = Load()
    stop = threading.Event()
    deadline = time.monotonic() + max_s  # bounded even if the test body hangs

    def client_loop() -> None:
        client = openai.OpenAI(base_url=v1, api_key="unused", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": MATH_QUESTION}]
        streamed = False
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if streamed:
                    with client.chat.completions.with_streaming_response.create(
                        model="moe-auto", messages=messages, stream=True
                    ) as response:
                        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
                else:
                    response = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages)
                    text = response.parse().choices[0].message.content or ""
                assert text.endswith(MATH_QUESTION), text
                load.answered.append((response.headers["x-moe-decision-id"], response.headers["x-moe-expert"]))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding, asserted by the test
                load.errors.append(exc)
            streamed = streams and not streamed

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def assert_every_request_recorded(load: Load, database_url: str) -> None:
    assert load.errors == [] and load.sent > 0
    ids = {decision_id for decision_id, _ in load.answered}
    wait_for(lambda: {r.id for r in decisions(database_url)} == ids, timeout_s=60,
             what=f"exactly the {len(ids)} records of the requests sent")


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The sum of the gateway's /metrics samples called `name` with these labels (0 when there are none)."""
    families = text_string_to_metric_families(httpx.get(f"{gw.base_url}/metrics", timeout=10).text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def readyz(gw: Gateway) -> dict[str, Any]:
    return httpx.get(f"{gw.base_url}/readyz", timeout=10).json()


# -- PostgreSQL ---------------------------------------------------------------------------------

def test_postgres_restart_mid_run_answers_everything_and_loses_no_record(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path
) -> None:
    with throwaway_postgres() as postgres, \
            running_gateway(routed_config(healthy_experts, router_artifact), postgres.url, tmp_path) as gw:
        with under_load(gw.v1) as load:
            load.wait_for_answers(8, what="answers before the outage")
            postgres.stop()
            # More than were in flight when it stopped: some requests were sent and served while it was down.
            load.wait_for_answers(CLIENTS + 1, timeout_s=5, what="answers while PostgreSQL is down")
            # Still ready, and still alive: the log buffers, so taking the replica out would only make it an outage.
            wait_for(lambda: readyz(gw)["decision_log"]["database_reachable"] is False, timeout_s=10,
                     what="/readyz to report the database down")
            ready = httpx.get(f"{gw.base_url}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert ready.json()["decision_log"]["draining"] is False
            assert httpx.get(f"{gw.base_url}/healthz", timeout=10).status_code == 200
            assert metric(gw, "llm_decision_log_database_reachable") == 0
            assert metric(gw, "llm_decision_log_backlog_age_seconds") > 0
            postgres.start()
            load.wait_for_answers(8, what="answers after the outage")
        assert_every_request_recorded(load, postgres.url)
        wait_for(lambda: readyz(gw)["decision_log"]["database_reachable"] is True, what="/readyz to report the database back")
        assert metric(gw, "llm_decision_log_pending") == 0
        assert metric(gw, "llm_decision_log_backlog_age_seconds") == 0


# -- Redis ----------------------------------------------------------------------------------------

def _redis_seen(gw: Gateway) -> tuple[bool, float]:
    """Redis as the gateway reports it: /readyz's `reachable`, and the llm_redis_reachable gauge."""
    ready = readyz(gw)
    assert ready["ready"] is True  # Redis is optional: its outage never makes the gateway unready
    return ready["redis"]["reachable"], metric(gw, "llm_redis_reachable")


def test_redis_restart_mid_run_keeps_serving_and_is_reported(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with throwaway_redis() as server, running_gateway(config, sqlite_url, tmp_path, redis_url=server.url) as gw, \
            under_load(gw.v1) as load:
        load.wait_for_answers(8, what="answers before the outage")
        assert _redis_seen(gw) == (True, 1.0)
        server.stop()
        stopped_at = len(load.answered)
        wait_for(lambda: _redis_seen(gw) == (False, 0.0), timeout_s=5, what="the gateway to see Redis down")
        load.wait_for_answers(CLIENTS + 1, since=stopped_at, timeout_s=5, what="answers while Redis is down")
        server.start()
        wait_for(lambda: _redis_seen(gw) == (True, 1.0), timeout_s=10, what="the gateway to see Redis back")
        load.wait_for_answers(8, what="answers after the outage")
    assert_every_request_recorded(load, sqlite_url)


# -- an expert's process killed ---------------------------------------------------------------------

def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


BREAKER_THRESHOLD = 3


def test_killed_expert_falls_back_and_its_breaker_opens(
    upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    stem_server = subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port", str(port)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), timeout_s=60, what="the stem expert's server")
        experts = [expert("stem", "echo-stem", f"http://127.0.0.1:{port}/v1", domains=STEM),
                   expert("general", "echo-general", f"{upstream}/v1", domains=REST)]
        # Probes once a minute: only the breaker can rank the dead expert last within this test.
        settings = {"moe_health_interval_s": 60, "moe_breaker_threshold": BREAKER_THRESHOLD,
                    "moe_breaker_cooldown_s": 120}
        with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path, **settings) as gw:
            # Not streamed: a stream the kill cuts after its first byte can only end in an error event.
            with under_load(gw.v1, streams=False) as load:
                wait_for(lambda: sum(e == "stem" for _, e in load.answered) >= 8, what="stem answering")
                stem_server.kill()
                stem_server.wait(10)
                load.wait_for_answers(30, timeout_s=60, what="answers after the kill")
            stem_failures = metric(gw, "llm_expert_call_errors_total", expert="stem")  # of any kind
            fallbacks = metric(gw, "llm_model_fallbacks_total", virtual_model="moe-auto")
            ready = readyz(gw)
    finally:
        if stem_server.poll() is None:
            stem_server.kill()
            stem_server.wait(10)
    assert_every_request_recorded(load, sqlite_url)
    assert ready["ready"] is True and ready["experts"]["stem"]["healthy"] is True  # no probe has run since
    records = decisions(sqlite_url)
    by_general = [r for r in records if r.chosen_expert == "general"]
    assert len(by_general) >= 30 and all(r.ranked[0]["expert"] == "stem" for r in by_general)
    # The breaker opened after BREAKER_THRESHOLD failures (plus those already in flight then), and from
    # then on stem was not even tried: /metrics counts a handful of stem failures, not one per request.
    assert BREAKER_THRESHOLD <= stem_failures <= BREAKER_THRESHOLD + CLIENTS - 1
    assert fallbacks == len(by_general)
    tried_stem = [r for r in by_general if any(c.expert == "stem" for c in r.calls)]
    assert len(tried_stem) == stem_failures
    assert all([(c.expert, c.status) for c in r.calls] == [("general", "ok")]
               for r in by_general if r not in tried_stem)
    assert all(r.status == "ok" for r in records)
