"""The dashboard's operator views and feedback (/ui/api): the experts' traffic, latency, errors and cost, router
versions promoted and reverted with their shadow agreement and A/B traffic, the evaluation's curve and live point,
and feedback over time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine

from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions
from migrations.schema import ExpertCallRow, FeedbackRow
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, decisions, retagged, rows, wait_for
from tests.gateway.ui.support import Dashboard, as_utc, insert_decisions, open_dashboard


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
