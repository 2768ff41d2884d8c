"""The retraining loop end to end against PostgreSQL, at a small scale: a wrong router serves real requests through
two gateway replicas with exploration on and the question text kept; the caller posts feedback (another tenant
cannot); `moe router retrain` learns a candidate from that log; a gate that asks too much fails and one that asks
what the log supports passes; the candidate serves an A/B share, then decides in shadow, then goes active on both replicas
without a failed request, routes better there, and `moe router revert` brings the old version back."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import httpx
import yaml
from sqlalchemy import create_engine
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.config import GatewayConfig
from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions
from tests.gateway.support import Gateway, decisions, issue_key, running_gateway, wait_for
from tests.training.test_retrain import EXPERTS, PRICES, TRUTH, jsonl, question
from training.train import train_router

REQUESTS = 300


def moe(*args: str, database_url: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": database_url}, terminal_width=200)
    return result.exit_code, result.output


def gate(tmp_path: Path, name: str, version: int, checks: list[dict[str, object]], database_url: str) -> int:
    profile = tmp_path / f"{name}.json"
    profile.write_text(json.dumps({"checks": checks}))
    code, _ = moe("router", "gate", "--router", "pool", "--version", str(version), "--profile", str(profile),
                  database_url=database_url)
    return code


def ask(client: httpx.Client, gw: Gateway, key: str, kind: str, i: int, user: str | None = None) -> httpx.Response:
    body = {"model": "moe-pool", "max_tokens": 8, "messages": [{"role": "user", "content": question(kind, i)}]}
    response = client.post(f"{gw.v1}/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={**body, **({"user": user} if user else {})})
    assert response.status_code == 200, response.text
    return response


def test_retrained_from_its_own_traffic_the_router_gets_better_and_is_served_without_a_restart(
    upstream: str, router_cache: Path, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    versions = RouterVersions(create_engine(postgres_url))
    parent_dir = tmp_path / "parent"  # trained on data where each expert has the other's skill: a wrong router
    train_router("skill-based", parent_dir, dataset=str(jsonl(tmp_path / "swapped.jsonl", 100, swapped=True, seed=1)))
    parent = versions.register("pool", parent_dir, status="active")
    raw = {
        "experts": [{"name": e, "model": f"echo-{e}", "api_base": f"{upstream}/v1", "price_per_mtok": PRICES[e]}
                    for e in EXPERTS],
        "routers": [{"name": "pool", "artifact": str(parent_dir)}],
        "virtual_models": [{"name": "moe-pool", "router": "pool", "exploration": {"epsilon": 0.3},
                            "store_text": {"retention_days": 30}}],
    }
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = GatewayConfig.model_validate(raw)
    owner, stranger = issue_key(postgres_url, tenant="acme"), issue_key(postgres_url, name="other", tenant="globex")
    settings = {"moe_require_api_key": True, "moe_router_poll_s": 0.2, "moe_router_versions_dir": tmp_path / "v",
                "moe_shadow_share": 1.0}
    rng = random.Random(0)
    with running_gateway(config, postgres_url, tmp_path / "a", **settings) as one, \
            running_gateway(config, postgres_url, tmp_path / "b", **settings) as two, httpx.Client(timeout=30) as client:
        # Traffic, and the caller's verdict on each answer: only the expert that answered is judged.
        for i in range(REQUESTS):
            kind = EXPERTS[i % 2]
            response = ask(client, (one, two)[i % 2], owner.key, kind, i)
            expert = response.headers["x-moe-expert"]
            verdict = {"decision_id": response.headers["x-moe-decision-id"],
                       "score": float(rng.random() < TRUTH[expert][kind])}
            given = client.post(f"{one.v1}/feedback", headers={"authorization": f"Bearer {owner.key}"}, json=verdict)
            assert given.status_code == 200, given.text
        refused = client.post(f"{two.v1}/feedback", headers={"authorization": f"Bearer {stranger.key}"},
                              json={**verdict, "score": 1.0})
        assert refused.status_code == 404
        wait_for(lambda: len(decisions(postgres_url)) == REQUESTS, what="every decision written")
        logged = decisions(postgres_url)
        assert all(d.prompt and d.answer for d in logged) and 0 < sum(d.explored for d in logged) < REQUESTS / 2

        code, output = moe("router", "retrain", "--router", "pool", "--out", str(tmp_path / "candidate"),
                           "--config", str(config_path), database_url=postgres_url)
        assert code == 0, output
        candidate = versions.list("pool")[-1]
        assert (candidate.status, candidate.parent_id) == ("candidate", parent.id)
        assert candidate.metrics["n_records"] == REQUESTS and candidate.metrics["offpolicy_gain_dr"] > 0.2

        assert gate(tmp_path, "greedy", candidate.id, [{"metric": "n_records", "min": 10 * REQUESTS}], postgres_url) == 1
        assert gate(tmp_path, "unknown", candidate.id, [{"metric": "no_such_metric", "min": 0}], postgres_url) == 1
        fair = [{"metric": "n_records", "min": REQUESTS // 2}, {"metric": "offpolicy_gain_dr", "min": 0.0},
                {"metric": "expert_share_max", "max": 0.95}]
        assert gate(tmp_path, "fair", candidate.id, fair, postgres_url) == 0

        # A/B: half of the users, each always by the same version.
        assert moe("router", "ab", str(candidate.id), "--share", "0.5", database_url=postgres_url)[0] == 0
        wait_for(lambda: all(httpx.get(f"{gw.base_url}/readyz").json()["router_versions"]["pool"]["ab"]
                             == candidate.id for gw in (one, two)), what="both replicas testing")
        users = [f"user-{i}" for i in range(20)]
        assigned = {u: ask(client, one, owner.key, "prose", 1, u).headers["x-moe-router"] for u in users}
        assert {u: ask(client, two, owner.key, "prose", 1, u).headers["x-moe-router"] for u in users} == assigned
        assert len(set(assigned.values())) == 2
        assert moe("router", "ab", str(candidate.id), "--share", "0", database_url=postgres_url)[0] == 0  # it ends

        # Shadow: the candidate decides beside the active version, logged and counted, never served.
        assert moe("router", "promote", str(candidate.id), "--to", "shadow", database_url=postgres_url)[0] == 0
        wait_for(lambda: all(httpx.get(f"{gw.base_url}/readyz").json()["router_versions"]["pool"]["shadow"]
                             == candidate.id for gw in (one, two)), what="both replicas shadowing")
        shadowed = ask(client, one, owner.key, "maths", 9001)
        assert shadowed.headers["x-moe-router"].endswith(f"@{parent.version}")
        assert f'shadow="reward-distilled@{candidate.version}"' in httpx.get(f"{one.base_url}/metrics").text

        # Promoted while traffic flows: both replicas switch with no failed request, and route better.
        served: list[tuple[str, str, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=30) as own:
                i = 0
                while not stop.is_set():
                    kind = EXPERTS[i % 2]
                    for name, gw in (("one", one), ("two", two)):
                        response = own.post(f"{gw.v1}/chat/completions",
                                            headers={"authorization": f"Bearer {owner.key}"},
                                            json={"model": "moe-pool", "max_tokens": 8,
                                                  "messages": [{"role": "user", "content": question(kind, 7000 + i)}]})
                        if response.status_code != 200:
                            failures.append(response.text)
                        else:
                            served.append((name, response.headers["x-moe-router"], kind, response.headers["x-moe-expert"]))
                    i += 1

        def serving(version: str) -> bool:
            latest = {name: header for name, header, *_ in served[-4:]}
            return len(latest) == 2 and all(h.endswith(f"@{version}") for h in latest.values())

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            wait_for(lambda: serving(parent.version), what="both replicas serving the parent")
            wait_for(lambda: len(served) >= 80, what="traffic on the parent")
            assert moe("router", "promote", str(candidate.id), database_url=postgres_url)[0] == 0
            wait_for(lambda: serving(candidate.version), timeout_s=60, what="both replicas serving the candidate")
            start = len(served)
            wait_for(lambda: len(served) - start >= 80, what="traffic on the candidate")
            assert moe("router", "revert", "pool", database_url=postgres_url)[0] == 0
            wait_for(lambda: serving(parent.version), timeout_s=60, what="both replicas serving the parent again")
        finally:
            stop.set()
            worker.join()
    assert failures == []
    on = [(kind, expert) for _, header, kind, expert in served if header.endswith(f"@{candidate.version}")]
    before = [(kind, expert) for _, header, kind, expert in served[:start] if header.endswith(f"@{parent.version}")]
    # The parent sends each question to the expert bad at it, the candidate to the right one; each explores 30% of
    # the time (expected shares of right experts: 0.3 and 0.7; over 80 requests each, 0.5 is 3.9 deviations away).
    assert sum(k == e for k, e in on) / len(on) > 0.5 > sum(k == e for k, e in before) / len(before)
