"""Every view of the dashboard in a real browser, populated by a day of three tenants' traffic, feedback and router
versions, and a page that asks nothing of any host but the gateway.

With MOE_UI_SCREENSHOTS set to a folder, the tour saves each view there at 1280x800 (docs/ui-*.png come from
`MOE_UI_SCREENSHOTS=docs pytest tests/gateway/ui -k tour`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, expect
from sqlalchemy import create_engine

from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions
from tests.gateway.support import expert, issue_key, retagged, routed_config, running_gateway
from tests.gateway.ui.support import QUESTIONS, give_feedback, open_tab, recorded

# -- (5) every view, populated, and nothing fetched from elsewhere ---------------------------------
GATE_METRICS = {"auc": 0.812, "max_accuracy": 0.861, "accuracy_at_half_cost": 0.803, "oracle_gap": 0.071}


def with_manifest(artifact: Path, directory: Path, version: str, **params: Any) -> Path:
    """A copy of a trained router under another version, its manifest's params extended (e.g. an evaluation's
    cost-quality curve, which the dashboard plots for the served version)."""
    retagged(artifact, directory, version)
    manifest = json.loads((directory / "router.json").read_text())
    manifest["params"] = {**manifest.get("params", {}), **params}
    (directory / "router.json").write_text(json.dumps(manifest))
    return directory


def spread_over_time(database_url: str) -> None:
    """Moves the records just made back over the last day, oldest furthest back, each feedback two minutes after its
    decision, so the time charts show a history rather than one instant."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE decisions d SET created_at = now() - (s.n * interval '16 minutes') FROM "
            "(SELECT id, row_number() OVER (ORDER BY created_at DESC, id DESC) - 1 AS n FROM decisions) s "
            "WHERE d.id = s.id"
        )
        conn.exec_driver_sql(
            "UPDATE expert_calls c SET started_at = d.created_at FROM decisions d WHERE c.decision_id = d.id"
        )
        conn.exec_driver_sql(
            "UPDATE feedback f SET created_at = d.created_at + interval '2 minutes', "
            "updated_at = d.created_at + interval '2 minutes' FROM decisions d WHERE f.decision_id = d.id"
        )
    engine.dispose()


def test_a_tour_of_every_view_asks_nothing_of_any_other_host(
    browser: Browser, healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    versions = RouterVersions(create_engine(postgres_url))
    old = versions.register(
        "embedding", retagged(router_artifact, tmp_path / "old", "20261015T081200Z"), status="active"
    )
    curve = [
        {"lambda": lam, "cost": cost, "accuracy": acc}
        for lam, cost, acc in (
            (0.0, 0.0068, 0.861),
            (0.5, 0.0055, 0.852),
            (1.0, 0.0046, 0.833),
            (2.0, 0.0039, 0.806),
            (5.0, 0.0031, 0.771),
            (20.0, 0.0026, 0.742),
        )
    ]
    served_dir = with_manifest(router_artifact, tmp_path / "served", "20261101T093000Z", cost_quality=curve)
    active = versions.register("embedding", served_dir, status="active", parent_id=old.id, metrics=GATE_METRICS)
    versions.register(
        "embedding",
        retagged(router_artifact, tmp_path / "shadow", "20261128T141500Z"),
        status="shadow",
        parent_id=active.id,
        metrics={**GATE_METRICS, "auc": 0.819},
    )
    trial = versions.register(
        "embedding",
        retagged(router_artifact, tmp_path / "trial", "20261130T220701Z"),
        parent_id=active.id,
        metrics={**GATE_METRICS, "auc": 0.824, "oracle_gap": 0.064},
    )
    versions.set_share(trial.id, 0.25)
    # A fourth expert whose server fails: its errors and open breaker show in the experts view.
    experts = [*healthy_experts, expert("legacy", "fail500-legacy", healthy_experts[0]["api_base"], price_per_mtok=0.4)]
    settings = {
        "moe_require_api_key": True,
        "moe_router_poll_s": 0.2,
        "moe_shadow_share": 1.0,
        "moe_router_versions_dir": tmp_path / "versions",
    }
    with running_gateway(routed_config(experts, served_dir), postgres_url, tmp_path, **settings) as gw:
        admin = issue_key(postgres_url, name="ops", tenant="platform", admin=True).key
        tenants = [issue_key(postgres_url, name=f"{t}-app", tenant=t).key for t in ("acme", "beta", "gamma")]
        # Three tenants' traffic, some of it asking the failing expert by name.
        jobs = [
            (tenants[i % 3], "legacy" if i % 15 == 7 else "moe-auto", question, f"user-{i % 7}")
            for i, question in enumerate(QUESTIONS * 9)
        ]

        def send(job: tuple[str, str, str, str]) -> httpx.Response:
            key, model, question, user = job
            return httpx.post(
                f"{gw.v1}/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
                json={"model": model, "user": user, "messages": [{"role": "user", "content": question}]},
            )

        with ThreadPoolExecutor(4) as pool:
            sent = list(zip(jobs, pool.map(send, jobs), strict=True))
        assert {(job[1], a.status_code) for job, a in sent} == {("moe-auto", 200), ("legacy", 502)}
        answered = [(job[0], a.headers["x-moe-decision-id"]) for job, a in sent if a.status_code == 200]
        for i, (key, decision_id) in enumerate(answered[::2]):  # feedback on half of them, mostly good
            verdict = (
                {"thumbs": "down", "comment": "answered only the first half of the question"}
                if i % 5 == 0
                else {"thumbs": "up"}
                if i % 3
                else {"score": 0.6, "comment": "right, but long-winded"}
            )
            give_feedback(gw, key, decision_id, **verdict)
        recorded(postgres_url, len(jobs))
        spread_over_time(postgres_url)

        with open_tab(browser, gw) as tab:
            tab.open()
            tab.sign_in(admin)
            view = tab.loaded("decisions")
            expect(view.locator("tr[data-decision-id]")).to_have_count(50)
            tab.shot("decisions")

            tab.go(f"#/decisions/{answered[0][1]}")  # one with feedback
            detail = tab.loaded("decision")
            expect(detail.locator("table.calls tbody tr")).to_have_count(1)
            expect(detail.locator("table.feedback-list tbody tr")).to_have_count(1)
            tab.shot("decision-detail")

            tab.go("#/experts")
            tab.loaded("experts")
            tab.page.select_option("#experts-window", "1440")  # the day the records were spread over
            view = tab.loaded("experts")
            expect(view.locator("table.experts tbody tr")).to_have_count(4)
            expect(view.locator('tr[data-expert="legacy"]')).to_contain_text("breaker open")
            assert view.locator("svg.chart path.line").count() == 4
            tab.shot("experts")

            tab.go("#/routers")
            view = tab.loaded("routers")
            pills = view.locator("table.versions .pill").all_inner_texts()
            assert sorted(pills) == ["active", "candidate", "retired", "shadow"]
            expect(view.locator(f'tr[data-version-id="{trial.id}"]')).to_contain_text("25% of users")
            tab.shot("routers")

            tab.go("#/evaluation")
            view = tab.loaded("evaluation")
            expect(view.locator("svg.chart circle.dot.curve")).to_have_count(len(curve))
            expect(view.locator("svg.chart .live-point")).to_have_count(1)
            tab.shot("evaluation")

            tab.go("#/feedback")
            view = tab.loaded("feedback")
            assert view.locator("svg.chart rect.bar").count() > 10
            tab.shot("feedback")
            tab.assert_only_the_gateway()
