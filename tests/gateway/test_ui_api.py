"""The dashboard's JSON API (/ui/api) on a running gateway over the scripted upstream, its decision log in SQLite and
PostgreSQL: keys and tenant scopes, decisions made by real requests, pagination, a decision's calls and feedback,
the experts' traffic, latency, errors and cost, router versions promoted and reverted, the evaluation's curve and
live point, feedback over time, and a database that does not answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url

from gateway.migrate import upgrade
from gateway.ui.queries import Cursor
from migrations.router_versions import RouterVersions
from migrations.schema import DecisionRow, ExpertCallRow, FeedbackRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    routed_config,
    rows,
    running_gateway,
    wait_for,
)
from tests.gateway.tcp_proxy import tcp_proxy
from tests.gateway.test_api_keys import issue_key
from tests.gateway.test_router_versions import retagged

STEM = ["math", "physics", "chemistry", "engineering", "computer science"]
PRICES = {"stem": 0.2, "humanities": 0.1, "general": 0.3}
OPERATOR_VIEWS = [
    ("GET", "/experts"),
    ("GET", "/routers"),
    ("GET", "/evaluation"),
    ("POST", "/routers/versions/1/promote"),
    ("POST", "/routers/embedding/revert"),
]
EVERY_CALL = [
    ("GET", "/me"),
    ("GET", "/decisions"),
    ("GET", "/decisions/some-id"),
    ("GET", "/feedback"),
    *OPERATOR_VIEWS,
]


@pytest.fixture
def failing_stem(upstream: str) -> list[dict[str, Any]]:
    """The maths expert answers 500 (the router ranks it first for a maths question; another expert answers);
    the other two answer."""
    v1 = f"{upstream}/v1"
    return [
        expert("stem", "fail500-stem", v1, price_per_mtok=PRICES["stem"], domains=STEM),
        expert(
            "humanities",
            "echo-humanities",
            v1,
            price_per_mtok=PRICES["humanities"],
            domains=["history", "philosophy", "law", "psychology"],
        ),
        expert(
            "general",
            "echo-general",
            v1,
            price_per_mtok=PRICES["general"],
            domains=["business", "economics", "health", "biology", "other"],
        ),
    ]


@dataclass
class Dashboard:
    gw: Gateway
    url: str
    admin: str
    acme: str
    globex: str

    def get(self, path: str, key: str | None, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.gw.base_url}/ui/api{path}", headers=bearer(key), params=params, timeout=30)

    def post(self, path: str, key: str | None, body: Any = None) -> httpx.Response:
        content = body if isinstance(body, str) else json.dumps(body if body is not None else {})
        return httpx.post(f"{self.gw.base_url}/ui/api{path}", headers=bearer(key), content=content, timeout=30)

    def ask(self, key: str, question: str = MATH_QUESTION, **body: Any) -> httpx.Response:
        response = httpx.post(
            f"{self.gw.v1}/chat/completions",
            headers=bearer(key),
            timeout=30,
            json={"model": "moe-auto", "messages": [{"role": "user", "content": question}], **body},
        )
        assert response.status_code == 200, response.text
        return response

    def give_feedback(self, key: str, **body: Any) -> None:
        response = httpx.post(f"{self.gw.v1}/feedback", headers=bearer(key), json=body, timeout=30)
        assert response.status_code == 200, response.text

    def written(self, n: int) -> list[DecisionRow]:
        wait_for(lambda: len(decisions(self.url)) == n, what=f"{n} decisions written")
        return decisions(self.url)


def bearer(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


@contextmanager
def open_dashboard(
    experts: list[dict[str, Any]], artifact: Path, database_url: str, workdir: Path, **settings: Any
) -> Iterator[Dashboard]:
    """A gateway that requires keys (so decisions name their tenant), with an admin key and two tenants' keys."""
    merged = {
        "moe_require_api_key": True,
        "moe_breaker_threshold": 2,
        "moe_router_poll_s": 0.2,
        "moe_router_versions_dir": workdir / "versions",
        **settings,
    }
    with running_gateway(routed_config(experts, artifact), database_url, workdir, **merged) as gw:
        yield Dashboard(
            gw,
            database_url,
            issue_key(database_url, name="root", tenant="ops", admin=True).key,
            issue_key(database_url, tenant="acme").key,
            issue_key(database_url, tenant="globex").key,
        )


@pytest.fixture
def dashboard(
    failing_stem: list[dict[str, Any]], router_artifact: Path, database_url: str, tmp_path: Path
) -> Iterator[Dashboard]:
    with open_dashboard(failing_stem, router_artifact, database_url, tmp_path) as opened:
        yield opened


def as_utc(moment: datetime) -> datetime:
    """A time read from the log as UTC (SQLite keeps the UTC wall time without its zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def insert_decisions(database_url: str, moments: list[datetime], **columns: Any) -> list[str]:
    """Decision rows written straight to the log at the given times (the same time for several: ties)."""
    rows_ = [
        {
            "id": str(uuid.uuid4()),
            "created_at": moment,
            "requested_model": "moe-auto",
            "virtual_model": "moe-auto",
            "ranked": [],
            "recruited": [],
            "status": "ok",
            "http_status": 200,
            "request_hash": "0" * 64,
            "stream": False,
            "explored": False,
            "tenant": "ops",
            **columns,
        }
        for moment in moments
    ]
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(DecisionRow), rows_)
    finally:
        engine.dispose()
    return [row["id"] for row in rows_]


# -- keys ---------------------------------------------------------------------------------------------------------
def test_every_call_takes_a_key_and_the_operator_views_an_admin_key(
    failing_stem: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    # /v1 requests need no key on this gateway: the dashboard still does.
    with open_dashboard(failing_stem, router_artifact, sqlite_url, tmp_path, moe_require_api_key=False) as dash:
        for method, path in EVERY_CALL:
            for key in (None, "sk-not-a-key"):
                refused = httpx.request(method, f"{dash.gw.base_url}/ui/api{path}", headers=bearer(key), json={})
                assert refused.status_code == 401, (method, path, key)
                assert refused.json()["error"]["type"] == "authentication_error"
                assert refused.json()["error"]["code"] == "invalid_api_key"
        for method, path in OPERATOR_VIEWS:
            forbidden = httpx.request(method, f"{dash.gw.base_url}/ui/api{path}", headers=bearer(dash.acme), json={})
            assert forbidden.status_code == 403, (method, path)
            assert forbidden.json()["error"]["code"] == "insufficient_permissions"
        acme, admin = dash.get("/me", dash.acme).json(), dash.get("/me", dash.admin).json()
    assert (acme["tenant"], acme["admin"], admin["tenant"], admin["admin"]) == ("acme", False, "ops", True)
    assert isinstance(acme["key_id"], int) and acme["name"] == "test"


# -- decisions ----------------------------------------------------------------------------------------------------
def test_a_tenant_sees_its_own_decisions_and_an_admin_every_tenants(dashboard: Dashboard) -> None:
    dash = dashboard
    asked = [
        (dash.acme, dash.ask(dash.acme, MATH_QUESTION)),
        (dash.acme, dash.ask(dash.acme, HISTORY_QUESTION)),
        (dash.globex, dash.ask(dash.globex, HISTORY_QUESTION)),
    ]
    logged = {row.id: row for row in dash.written(3)}
    ids = [response.headers["x-moe-decision-id"] for _, response in asked]

    every = dash.get("/decisions", dash.admin).json()
    assert [row["id"] for row in every["data"]] == ids[::-1] and every["next_cursor"] is None  # newest first
    for row, (_, response) in zip(every["data"], asked[::-1], strict=True):
        record = logged[row["id"]]
        # The expert that answered, as the response said; its cost as the log has it, tokens times its price.
        assert row["chosen_expert"] == response.headers["x-moe-expert"] == record.chosen_expert
        assert row["cost_usd"] == pytest.approx(record.cost_usd) and row["cost_usd"] > 0
        assert row["cost_usd"] == pytest.approx(
            (record.prompt_tokens + record.completion_tokens) * PRICES[record.chosen_expert] / 1e6
        )
        assert (row["tenant"], row["status"], row["http_status"]) == (record.tenant, "ok", 200)
        assert f"{row['router']}@{row['router_version']}" == response.headers["x-moe-router"]
        assert row["ranked"] == record.ranked and row["ranked"][0].keys() == {"expert", "score"}
        assert row["feedback"] == {"count": 0, "mean_score": None}
        assert datetime.fromisoformat(row["created_at"]) == as_utc(record.created_at)
    assert every["data"][-1]["chosen_expert"] != "stem"  # the maths expert failed; another answered

    def ids_seen(key: str, **params: Any) -> list[str]:
        response = dash.get("/decisions", key, **params)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()["data"]]

    assert ids_seen(dash.acme) == [ids[1], ids[0]]
    assert ids_seen(dash.globex) == [ids[2]]
    assert ids_seen(dash.acme, tenant="globex") == []  # a filter never widens a tenant's scope
    assert ids_seen(dash.admin, tenant="globex") == [ids[2]]
    assert ids_seen(dash.admin, tenant="") == ids[::-1]  # an empty filter is none
    humanities = [i for i in ids[::-1] if logged[i].chosen_expert == "humanities"]
    assert humanities and ids_seen(dash.admin, expert="humanities") == humanities
    assert ids_seen(dash.admin, status="ok", virtual_model="moe-auto") == ids[::-1]
    assert ids_seen(dash.admin, status="error") == ids_seen(dash.admin, virtual_model="other") == []
    assert ids_seen(dash.admin, router_version=every["data"][0]["router_version"]) == ids[::-1]

    hidden = dash.get(f"/decisions/{ids[2]}", dash.acme)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "decision_not_found"
    assert dash.get(f"/decisions/{ids[2]}", dash.globex).status_code == 200
    assert dash.get(f"/decisions/{ids[2]}", dash.admin).status_code == 200


def test_pages_hold_every_decision_exactly_once(dashboard: Dashboard) -> None:
    dash = dashboard
    for _ in range(5):
        dash.ask(dash.admin, HISTORY_QUESTION)
    dash.written(5)
    tie = datetime.now(UTC) - timedelta(minutes=5)  # many decisions in the same microsecond: the id breaks ties
    inserted = insert_decisions(dash.url, [tie] * 17 + [tie - timedelta(seconds=1)] * 3)
    everything = {row.id: row for row in decisions(dash.url)}
    assert len(everything) == 25 and set(inserted) <= set(everything)

    seen, cursor, pages = [], None, 0
    while True:
        response = dash.get("/decisions", dash.admin, limit=4, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 4
        seen += [row["id"] for row in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 7 and len(seen) == len(set(seen)) == 25 and set(seen) == set(everything)
    order = [(as_utc(everything[i].created_at), i) for i in seen]
    assert order == sorted(order, reverse=True)  # newest first, ties by id

    for params, param in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"cursor": "x" * 500}, "query.cursor"),
        ({"expert": "\x00"}, "query.expert"),  # PostgreSQL takes no NUL: refused before it reaches the database
        ({"cursor": Cursor(datetime.now(UTC), "a\x00b").encode()}, "cursor"),
    ):
        refused = dash.get("/decisions", dash.admin, **params)
        assert refused.status_code == 400, params
        assert refused.json()["error"]["param"] == param and refused.json()["error"]["type"] == "invalid_request_error"


def test_a_decisions_detail_has_its_expert_calls_and_feedback(dashboard: Dashboard) -> None:
    dash = dashboard
    response = dash.ask(dash.acme, MATH_QUESTION)
    decision_id, answered_by = response.headers["x-moe-decision-id"], response.headers["x-moe-expert"]
    dash.give_feedback(dash.acme, decision_id=decision_id, thumbs="up")
    dash.give_feedback(
        dash.admin, decision_id=decision_id, score=0.25, source="judge", expert="general", comment="too long"
    )
    (record,) = dash.written(1)

    detail = dash.get(f"/decisions/{decision_id}", dash.acme)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    decision = body["decision"]
    assert (decision["id"], decision["chosen_expert"], decision["tenant"]) == (decision_id, answered_by, "acme")
    assert (decision["error"], decision["propensity"], decision["policy"]) == (None, 1.0, None)
    assert decision["recruited"] == record.recruited and decision["shadow_version"] is None
    assert decision["feedback"] == {"count": 2, "mean_score": 0.625}
    assert "prompt" not in decision and "answer" not in decision

    failed, answered = body["calls"]  # the maths expert first (it failed), then the one that answered
    assert (failed["expert"], failed["status"], failed["cost_usd"]) == ("stem", "upstream_5xx", None)
    assert failed["error"] and failed["latency_ms"] > 0
    assert (answered["expert"], answered["status"], answered["error"]) == (answered_by, "ok", None)
    tokens = answered["prompt_tokens"] + answered["completion_tokens"]
    assert answered["cost_usd"] == pytest.approx(tokens * PRICES[answered_by] / 1e6) == pytest.approx(record.cost_usd)
    assert datetime.fromisoformat(failed["started_at"]) <= datetime.fromisoformat(answered["started_at"])

    assert [(f["source"], f["score"], f["expert"], f["comment"]) for f in body["feedback"]] == [
        ("user", 1.0, None, None),
        ("judge", 0.25, "general", "too long"),
    ]
    listed = dash.get("/decisions", dash.acme).json()["data"]
    assert [(row["id"], row["feedback"]) for row in listed] == [(decision_id, {"count": 2, "mean_score": 0.625})]
    missing = dash.get("/decisions/no-such-decision", dash.admin)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert dash.get(f"/decisions/{'x' * 37}", dash.admin).status_code == 400  # longer than any decision id


# -- experts ------------------------------------------------------------------------------------------------------
def test_the_experts_view_counts_traffic_latency_errors_and_cost(dashboard: Dashboard) -> None:
    dash = dashboard
    for question in (MATH_QUESTION, MATH_QUESTION, MATH_QUESTION, HISTORY_QUESTION, HISTORY_QUESTION):
        dash.ask(dash.acme, question)
    logged = dash.written(5)
    # Older than the window: counted by a window that reaches it only.
    insert_decisions(dash.url, [datetime.now(UTC) - timedelta(hours=2)], chosen_expert="general", cost_usd=0.5)

    response = dash.get("/experts", dash.admin, window_minutes=60)
    assert response.status_code == 200, response.text
    view = response.json()
    experts = {e["name"]: e for e in view["experts"]}
    assert [e["name"] for e in view["experts"]] == ["stem", "humanities", "general"]  # every configured one
    calls = rows(dash.url, ExpertCallRow, ExpertCallRow.started_at)
    for name, stats in experts.items():
        answered = [r for r in logged if r.chosen_expert == name]
        assert stats["requests"] == len(answered) and stats["share"] == pytest.approx(len(answered) / 5)
        assert stats["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in answered))
        latencies = [c.latency_ms for c in calls if c.expert == name]
        if latencies:  # percentile_cont on PostgreSQL, numpy on SQLite: the same interpolation
            assert stats["p50_ms"] == pytest.approx(float(np.percentile(latencies, 50)))
            assert stats["p99_ms"] == pytest.approx(float(np.percentile(latencies, 99)))
        else:
            assert stats["p50_ms"] is stats["p99_ms"] is stats["error_rate"] is None
        assert stats["healthy"] is True
    stem = experts["stem"]
    # The maths expert failed twice, which opened its breaker, so the third maths question went elsewhere first.
    assert (stem["requests"], stem["errors"], stem["error_rate"], stem["breaker_open"]) == (0, 2, 1.0, True)
    assert [c.status for c in calls if c.expert == "stem"] == ["upstream_5xx"] * 2
    assert sum(e["requests"] for e in view["experts"]) == 5
    assert all(e["errors"] == 0 and not e["breaker_open"] for name, e in experts.items() if name != "stem")

    buckets = view["cost_over_time"]
    starts = sorted({datetime.fromisoformat(b["bucket_start"]) for b in buckets})
    assert all(later - earlier == timedelta(minutes=2) for earlier, later in zip(starts, starts[1:], strict=False))
    for name, stats in experts.items():
        assert sum(b["requests"] for b in buckets if b["expert"] == name) == stats["requests"]
        assert sum(b["cost_usd"] for b in buckets if b["expert"] == name) == pytest.approx(stats["cost_usd"])

    wider = {e["name"]: e for e in dash.get("/experts", dash.admin, window_minutes=180).json()["experts"]}
    assert wider["general"]["requests"] == experts["general"]["requests"] + 1
    assert wider["general"]["cost_usd"] == pytest.approx(experts["general"]["cost_usd"] + 0.5)
    assert dash.get("/experts", dash.admin, window_minutes=0).status_code == 400
    assert dash.get("/experts", dash.admin, window_minutes="an hour").status_code == 400


# -- router versions ----------------------------------------------------------------------------------------------
def test_promote_and_revert_from_the_dashboard_change_the_version_served(
    failing_stem: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    versions = RouterVersions(create_engine(postgres_url))
    with open_dashboard(failing_stem, router_artifact, postgres_url, tmp_path) as dash:

        def served() -> str:
            return dash.ask(dash.admin, HISTORY_QUESTION).headers["x-moe-router"]

        nothing = dash.post("/routers/embedding/revert", dash.admin)  # no version in the database yet
        assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "cannot_revert"
        first = versions.register("embedding", router_artifact, status="active")
        second = versions.register("embedding", retagged(router_artifact, tmp_path / "second", "v-second"))
        (router,) = dash.get("/routers", dash.admin).json()["routers"]
        assert (router["name"], router["serving"]) == ("embedding", f"embedding-domain@{first.version}")
        assert [(v["id"], v["version"], v["status"], v["parent"]) for v in router["versions"]] == [
            (first.id, first.version, "active", None),
            (second.id, "v-second", "candidate", None),
        ]
        assert router["versions"][0]["metrics"] == first.metrics and first.metrics
        assert router["versions"][0]["shadow"] == {"decisions": 0, "agreement": None}
        assert router["versions"][1]["ab"] is None

        promoted = dash.post(f"/routers/versions/{second.id}/promote", dash.admin, {"to": "active"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {"router": "embedding", "version": "v-second", "status": "active"}
        # Within a poll (0.2 s) on a quiet machine; the bound only keeps a broken reload from hanging.
        wait_for(lambda: served() == "embedding-domain@v-second", timeout_s=60, what="the promoted version served")
        after = dash.get("/routers", dash.admin).json()["routers"][0]
        assert after["serving"] == "embedding-domain@v-second"
        assert [v["status"] for v in after["versions"]] == ["retired", "active"]

        reverted = dash.post("/routers/embedding/revert", dash.admin)
        assert reverted.json() == {"router": "embedding", "version": first.version, "status": "active"}
        wait_for(lambda: served() == f"embedding-domain@{first.version}", timeout_s=60, what="the version reverted to")

        for path, body, status, code in (
            ("/routers/versions/999999/promote", {"to": "active"}, 404, "version_not_found"),
            (f"/routers/versions/{second.id}/promote", {"to": "retired"}, 400, "invalid_request"),
            (f"/routers/versions/{second.id}/promote", "not json", 400, "invalid_request"),
            ("/routers/versions/first/promote", {"to": "active"}, 400, "invalid_request"),
            (f"/routers/versions/{2**63}/promote", {"to": "active"}, 400, "invalid_request"),
            ("/routers/no-such-router/revert", {}, 404, "router_not_found"),
        ):
            refused = dash.post(path, dash.admin, body)
            assert refused.status_code == status, (path, refused.text)
            assert refused.json()["error"]["code"] == code, path
        assert versions.serving("embedding")["active"].id == first.id  # the refusals changed nothing


def test_the_routers_view_shows_shadow_agreement_and_ab_traffic(
    failing_stem: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    upgrade(sqlite_url)
    versions = RouterVersions(create_engine(sqlite_url))
    active = versions.register("embedding", router_artifact, status="active")
    shadow = versions.register("embedding", retagged(router_artifact, tmp_path / "shadow", "v-shadow"), status="shadow")
    trial = versions.register("embedding", retagged(router_artifact, tmp_path / "trial", "v-trial"))
    versions.set_share(trial.id, 0.5)
    with open_dashboard(failing_stem, router_artifact, sqlite_url, tmp_path, moe_shadow_share=1.0) as dash:
        for i in range(12):
            dash.ask(dash.acme, HISTORY_QUESTION, user=f"user-{i}")
        logged = dash.written(12)
        view = {v["id"]: v for v in dash.get("/routers", dash.admin).json()["routers"][0]["versions"]}
    on_trial = sum(r.router_version == "v-trial" for r in logged)
    assert 0 < on_trial < 12  # a share of the users (sticky per user)
    assert view[trial.id]["ab"] == {"share": 0.5, "requests": on_trial}
    assert view[active.id]["ab"] is view[shadow.id]["ab"] is None
    shadowed = sum(r.shadow_version == "embedding-domain@v-shadow" for r in logged)
    assert shadowed == 12  # the same weights: the shadow always agrees
    assert view[shadow.id]["shadow"] == {"decisions": shadowed, "agreement": 1.0}
    assert view[active.id]["shadow"] == {"decisions": 0, "agreement": None}


# -- evaluation ---------------------------------------------------------------------------------------------------
def test_the_evaluation_view_has_the_served_versions_curve_and_live_point(
    failing_stem: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    evaluated = retagged(router_artifact, tmp_path / "evaluated", "v-evaluated")
    manifest = json.loads((evaluated / "router.json").read_text())
    curve = [{"lambda": 0.0, "cost": 0.3, "accuracy": 0.7}, {"lambda": 2.0, "cost": 0.1, "accuracy": 0.5}]
    manifest["params"] = {**manifest["params"], "cost_quality": curve}
    (evaluated / "router.json").write_text(json.dumps(manifest))
    upgrade(sqlite_url)
    with open_dashboard(failing_stem, router_artifact, sqlite_url, tmp_path) as dash:
        before = dash.get("/evaluation", dash.admin).json()  # the config's artifact: no curve kept
        assert (before["router"], before["points"]) == ("embedding", [])
        assert before["live"] == {"requests": 0, "cost_per_1k": None, "quality": None}
        RouterVersions(create_engine(sqlite_url)).register("embedding", evaluated, status="active")
        wait_for(
            lambda: dash.ask(dash.acme, HISTORY_QUESTION).headers["x-moe-router"].endswith("@v-evaluated"),
            timeout_s=60,
            what="the evaluated version served",
        )
        answers = [dash.ask(dash.acme, question) for question in (MATH_QUESTION, HISTORY_QUESTION)]
        for response, score in zip(answers, (1.0, 0.5), strict=True):
            dash.give_feedback(dash.acme, decision_id=response.headers["x-moe-decision-id"], score=score)
        wait_for(
            lambda: sum(r.router_version == "v-evaluated" for r in decisions(sqlite_url)) >= 3,
            what="the evaluated version's decisions written",
        )
        view = dash.get("/evaluation", dash.admin, router="embedding").json()
        unknown = dash.get("/evaluation", dash.admin, router="nope")
    live = [r for r in decisions(sqlite_url) if r.router_version == "v-evaluated"]
    assert (view["router"], view["version"]) == ("embedding", "v-evaluated")
    assert view["points"] == [
        {"label": "lambda 0", "cost_per_1k": 0.3, "quality": 0.7},
        {"label": "lambda 2", "cost_per_1k": 0.1, "quality": 0.5},
    ]
    assert view["live"]["requests"] == len(live)
    assert view["live"]["cost_per_1k"] == pytest.approx(1000 * sum(r.cost_usd or 0 for r in live) / len(live))
    assert view["live"]["quality"] == pytest.approx(0.75)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "router_not_found"


# -- feedback -----------------------------------------------------------------------------------------------------
def test_feedback_over_time_in_intervals_scoped_to_the_tenant(dashboard: Dashboard) -> None:
    dash = dashboard
    up, down = dash.ask(dash.acme), dash.ask(dash.acme, HISTORY_QUESTION)
    theirs = dash.ask(dash.globex, HISTORY_QUESTION)
    dash.give_feedback(dash.acme, decision_id=up.headers["x-moe-decision-id"], thumbs="up")
    dash.give_feedback(dash.acme, decision_id=down.headers["x-moe-decision-id"], thumbs="down")
    dash.give_feedback(dash.globex, decision_id=theirs.headers["x-moe-decision-id"], score=0.5)
    # A judge's score on an acme decision, three hours ago: its own interval, acme's too.
    dash.give_feedback(dash.admin, decision_id=up.headers["x-moe-decision-id"], score=0.75, source="judge")
    engine = create_engine(dash.url)
    with engine.begin() as conn:
        conn.execute(
            FeedbackRow.__table__.update()
            .where(FeedbackRow.source == "judge")
            .values(created_at=datetime.now(UTC) - timedelta(hours=3))
        )
    engine.dispose()
    dash.written(3)
    given = rows(dash.url, FeedbackRow, FeedbackRow.id)
    tenant_of = {r.id: r.tenant for r in decisions(dash.url)}

    def expected(tenant: str | None) -> dict[datetime, list[float]]:
        scores: dict[datetime, list[float]] = {}
        for f in given:
            if tenant is None or tenant_of[f.decision_id] == tenant:
                scores.setdefault(as_utc(f.created_at).replace(minute=0, second=0, microsecond=0), []).append(f.score)
        return scores

    def charted(key: str, **params: Any) -> dict[datetime, dict[str, Any]]:
        response = dash.get("/feedback", key, bucket_minutes=60, window_hours=24, **params)
        assert response.status_code == 200, response.text
        buckets = response.json()["buckets"]
        starts = [datetime.fromisoformat(b["start"]) for b in buckets]
        assert len(buckets) == 25 and all(b - a == timedelta(hours=1) for a, b in zip(starts, starts[1:], strict=False))
        return {start: b for start, b in zip(starts, buckets, strict=True) if b["count"]}

    for key, params, tenant in (
        (dash.admin, {}, None),
        (dash.acme, {}, "acme"),
        (dash.globex, {}, "globex"),
        (dash.admin, {"tenant": "globex"}, "globex"),
        (dash.acme, {"tenant": "globex"}, "-"),
    ):
        got, want = charted(key, **params), expected(tenant)
        assert got.keys() == want.keys(), (params, tenant)
        for start, scores in want.items():
            assert got[start]["count"] == len(scores)
            assert got[start]["mean_score"] == pytest.approx(sum(scores) / len(scores))
            assert got[start]["thumbs_up"] == scores.count(1.0) and got[start]["thumbs_down"] == scores.count(0.0)
    assert sum(b["count"] for b in charted(dash.acme).values()) == 3  # the judge's score on acme's decision included

    for params in ({"bucket_minutes": 0}, {"window_hours": 0}, {"bucket_minutes": 1, "window_hours": 24 * 60}):
        refused = dash.get("/feedback", dash.admin, **params)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", params


# -- the database down --------------------------------------------------------------------------------------------
def test_a_database_that_does_not_answer_is_a_503_in_openais_shape(
    failing_stem: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    real = make_url(postgres_url)
    with tcp_proxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with open_dashboard(failing_stem, router_artifact, url, tmp_path) as dash:
            assert dash.get("/decisions", dash.admin).status_code == 200  # the key is known from now on
            proxy.down()
            down = {
                path: dash.get(path, dash.admin)
                for path in ("/decisions", "/decisions/some-id", "/experts", "/routers", "/evaluation", "/feedback")
            }
            proxy.up()
            back = dash.get("/decisions", dash.admin)
    for path, response in down.items():
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["type"] == "service_unavailable"
        assert response.json()["error"]["code"] == "decision_log_unavailable"
    assert back.status_code == 200
