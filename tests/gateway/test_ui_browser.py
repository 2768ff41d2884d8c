"""The dashboard at /ui in a real browser: Debian's Chromium, headless, driven by Playwright against a real gateway
(PostgreSQL, the scripted upstream, a trained router) and its /ui/api. Sign-in and refusal, live decisions with
their expert and cost, promote and revert clicks that change the version the gateway serves, a tenant's narrower
view, and a page that asks nothing of any host but the gateway.

With MOE_UI_SCREENSHOTS set to a folder, the tour saves each view there at 1280x800 (docs/ui-*.png come from
`MOE_UI_SCREENSHOTS=docs pytest tests/gateway/test_ui_browser.py`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright
from sqlalchemy import create_engine

from gateway.keys.store import KeyStore
from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions
from migrations.schema import DecisionRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    routed_config,
    running_gateway,
    wait_for,
)
from tests.gateway.test_api_keys import issue_key
from tests.gateway.test_router_versions import retagged

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it when missing
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
LIVE_S = 10  # the decisions view polls every 3 s: a new decision shows within one poll, with room for a slow machine

QUESTIONS = [  # routed by the trained router to each of the three experts
    MATH_QUESTION,
    HISTORY_QUESTION,
    "What is the derivative of sin(x) * x^2 with respect to x?",
    "Explain Newton's second law and give an example with a 2 kg mass.",
    "What did Kant mean by the categorical imperative?",
    "Why did the Roman Republic become an empire under Augustus?",
    "How should a small company account for depreciation of its delivery vans?",
    "What are the common symptoms of iron deficiency anaemia?",
    "How does supply and demand set the price of coffee beans?",
    "What is the time complexity of quicksort in the worst case, and why?",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests (`make test` installs chromium)")
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package: `apt-get install -y chromium`)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def usd(value: float) -> str:
    """The page's cost format (app.js `usd`): cents, or three significant digits below a dollar."""
    if value == 0:
        return "$0"
    digits = 2 if value >= 1 else max(2, 2 - math.floor(math.log10(value)))
    return f"${value:.{digits}f}"


@dataclass
class Dashboard:
    """A browser tab on the gateway's /ui, recording every request it makes and every error it reports."""

    page: Page
    base_url: str
    requested: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.base_url}/ui{route}")

    def go(self, route: str) -> None:
        self.page.evaluate("route => { location.hash = route; }", route)

    def sign_in(self, key: str) -> None:
        self.page.fill("#api-key", key)
        self.page.click("#login-form button[type=submit]")

    def loaded(self, view: str, timeout_s: float = 15) -> Locator:
        section = self.page.locator(f'#view-{view}[data-loaded="true"]')
        expect(section).to_be_visible(timeout=timeout_s * 1000)
        return section

    def row(self, decision_id: str) -> Locator:
        return self.page.locator(f'tr[data-decision-id="{decision_id}"]')

    def confirm(self, button: str, *, accept: bool = True) -> None:
        """Clicks an action and answers the page's confirmation dialog."""
        self.page.click(button)
        dialog = self.page.locator("dialog#confirm")
        expect(dialog).to_be_visible()
        self.page.click("#confirm-ok" if accept else "#confirm-cancel")
        expect(dialog).to_be_hidden()

    def api_calls(self, path: str) -> list[str]:
        return [url for url in self.requested if urlsplit(url).path.startswith(path)]

    def shot(self, name: str) -> None:
        folder = os.environ.get("MOE_UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.mouse.move(0, 0)  # no row lit up by the pointer's last click
            self.page.screenshot(path=str(Path(folder) / f"ui-{name}.png"))

    def heard(self, message: ConsoleMessage) -> None:
        """Script errors and Content-Security-Policy violations. A refused request (the 401 or 404 a test expects) is
        reported on the console too; the requests are checked on their own."""
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def assert_only_the_gateway(self) -> None:
        origin = urlsplit(self.base_url)
        others = [url for url in self.requested if urlsplit(url)[:2] != origin[:2]]
        assert self.requested and others == [], others
        assert self.problems == []


@contextmanager
def dashboard(browser: Browser, gw: Gateway) -> Iterator[Dashboard]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    tab = Dashboard(page, gw.base_url)
    page.on("request", lambda request: tab.requested.append(request.url))
    page.on("pageerror", lambda error: tab.problems.append(f"uncaught: {error}"))
    page.on("console", tab.heard)
    try:
        yield tab
    finally:
        context.close()


def ask(gw: Gateway, key: str, question: str = MATH_QUESTION, model: str = "moe-auto") -> httpx.Response:
    return httpx.post(
        f"{gw.v1}/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": question}]},
    )


def give_feedback(gw: Gateway, key: str, decision_id: str, **verdict: Any) -> None:
    response = httpx.post(
        f"{gw.v1}/feedback",
        headers={"authorization": f"Bearer {key}"},
        json={"decision_id": decision_id, **verdict},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def recorded(database_url: str, count: int) -> dict[str, DecisionRow]:
    """The decision log once it holds `count` records, by id."""
    wait_for(lambda: len(decisions(database_url)) >= count, what=f"{count} decision records")
    return {record.id: record for record in decisions(database_url)}


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    """A gateway that requires keys, with its decision log, keys and router versions in PostgreSQL."""
    upgrade(postgres_url)
    RouterVersions(create_engine(postgres_url)).register("embedding", router_artifact, status="active")
    with running_gateway(
        routed_config(healthy_experts, router_artifact),
        postgres_url,
        tmp_path,
        moe_require_api_key=True,
        moe_key_cache_ttl_s=0.5,
        moe_router_poll_s=0.2,
        moe_router_versions_dir=tmp_path / "versions",
    ) as gw:
        yield gw


# -- the page itself --------------------------------------------------------------------------------
def test_the_page_is_a_shell_of_packaged_assets_that_the_browser_may_only_fetch_from_the_gateway(
    gateway: Gateway,
) -> None:
    page = httpx.get(f"{gateway.base_url}/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == policy["img-src"] == "'self'"
    linked = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert linked and all(url.startswith(("/ui/static/", "#/")) for url in linked), linked
    for name, media_type in (
        ("app.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("app.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        asset = httpx.get(f"{gateway.base_url}/ui/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert asset.headers["content-security-policy"] == page.headers["content-security-policy"]
        again = httpx.get(f"{gateway.base_url}/ui/static/{name}", headers={"if-none-match": asset.headers["etag"]})
        assert again.status_code == 304 and again.content == b""  # revalidated, not sent again
    missing = httpx.get(f"{gateway.base_url}/ui/static/missing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    for outside in ("..%2Fpages.py", "%2E%2E/pages.py", "index.html"):  # only the packaged assets, by name
        assert httpx.get(f"{gateway.base_url}/ui/static/{outside}").status_code == 404


# -- (1) signing in ---------------------------------------------------------------------------------
def test_the_page_needs_a_key_refuses_a_wrong_one_and_loads_with_an_admin_key(
    browser: Browser, gateway: Gateway, postgres_url: str
) -> None:
    admin = issue_key(postgres_url, name="ops", tenant="acme", admin=True)
    answered = ask(gateway, admin.key)
    assert answered.status_code == 200
    recorded(postgres_url, 1)
    with dashboard(browser, gateway) as tab:
        tab.open()
        expect(tab.page.locator("#login-form")).to_be_visible()
        expect(tab.page.locator("#nav")).to_be_hidden()
        assert tab.page.locator("tr[data-decision-id]").count() == 0
        assert tab.api_calls("/ui/api") == []  # without a key the page asks for nothing

        tab.sign_in("sk-moe-" + "x" * 43)
        expect(tab.page.locator("#login-error")).to_contain_text("refused")
        expect(tab.page.locator("#login-form")).to_be_visible()
        assert tab.page.locator("tr[data-decision-id]").count() == 0
        assert tab.page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

        tab.sign_in(admin.key)
        tab.loaded("decisions")
        expect(tab.row(answered.headers["x-moe-decision-id"])).to_be_visible()
        expect(tab.page.locator("#whoami")).to_contain_text("ops")
        assert admin.key not in tab.page.url and all(admin.key not in url for url in tab.requested)

        tab.page.reload()  # the key lives in this tab's session: a reload stays signed in
        tab.loaded("decisions")
        tab.page.click("#logout")
        expect(tab.page.locator("#login-form")).to_be_visible()
        assert tab.page.locator("tr[data-decision-id]").count() == 0
        assert tab.page.evaluate("sessionStorage.length") == 0

        tab.sign_in(admin.key)
        tab.loaded("decisions")
        engine = create_engine(postgres_url)
        KeyStore(engine).revoke(admin.id)  # from another process: the next poll is refused, the login comes back
        engine.dispose()
        expect(tab.page.locator("#login-form")).to_be_visible(timeout=LIVE_S * 1000)
        expect(tab.page.locator("#login-error")).to_contain_text("revoked")
        assert tab.page.locator("tr[data-decision-id]").count() == 0
        tab.assert_only_the_gateway()


# -- (2) live decisions -----------------------------------------------------------------------------
def test_decisions_made_during_the_test_appear_with_their_expert_and_cost(
    browser: Browser, gateway: Gateway, postgres_url: str
) -> None:
    admin = issue_key(postgres_url, name="ops", tenant="acme", admin=True).key
    with dashboard(browser, gateway) as tab:
        tab.open()
        tab.sign_in(admin)
        tab.loaded("decisions")
        assert tab.page.locator("tr[data-decision-id]").count() == 0

        # Made while the page is open: the live view shows them without a click.
        answers = [ask(gateway, admin, question) for question in (MATH_QUESTION, HISTORY_QUESTION)]
        log = recorded(postgres_url, 2)
        for answer in answers:
            decision_id = answer.headers["x-moe-decision-id"]
            record = log[decision_id]
            assert record.chosen_expert == answer.headers["x-moe-expert"] and record.cost_usd > 0
            row = tab.row(decision_id)
            expect(row).to_be_visible(timeout=LIVE_S * 1000)
            score = next(r["score"] for r in record.ranked if r["expert"] == record.chosen_expert)
            expect(row.locator(".rank.is-chosen")).to_have_text(f"{record.chosen_expert} {score:.2f}")
            expect(row.locator("td.cost")).to_have_text(usd(record.cost_usd))
            expect(row).to_contain_text(record.router_version)
            expect(row).to_contain_text("ok")
        assert {log[a.headers["x-moe-decision-id"]].chosen_expert for a in answers} == {"stem", "humanities"}

        # One decision's detail: the expert call and the feedback given on it.
        math_id = answers[0].headers["x-moe-decision-id"]
        give_feedback(gateway, admin, math_id, thumbs="up", comment="right answer")
        tab.row(math_id).click()
        detail = tab.loaded("decision")
        calls = detail.locator("table.calls tbody tr")
        expect(calls).to_have_count(1)
        expect(calls.first).to_contain_text("stem")
        expect(calls.first).to_contain_text(usd(log[math_id].cost_usd))
        expect(detail.locator("table.feedback-list")).to_contain_text("right answer")
        tab.page.click("text=« All decisions")
        tab.loaded("decisions")
        expect(tab.row(math_id).locator("td.feedback")).to_have_text("1.00 (1)")

        # Filters: one expert, then one status.
        tab.page.fill("#filters [name=expert]", "humanities")
        tab.page.click("#filters button[type=submit]")
        tab.loaded("decisions")
        expect(tab.page.locator("tr[data-decision-id]")).to_have_count(1)
        expect(tab.row(answers[1].headers["x-moe-decision-id"])).to_be_visible()
        tab.page.click("#filters button[type=reset]")
        tab.loaded("decisions")
        tab.page.select_option("#filters [name=status]", "error")
        tab.loaded("decisions")
        expect(tab.page.locator("#decisions-empty")).to_be_visible()
        tab.page.click("#filters button[type=reset]")
        tab.loaded("decisions")

        # Past one page of 50: "Older" follows the cursor to the rest, none twice, none lost.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda q: ask(gateway, admin, q), QUESTIONS * 5))
        log = recorded(postgres_url, 52)
        tab.page.click("#refresh")
        tab.loaded("decisions")
        first = tab.page.locator("tr[data-decision-id]").evaluate_all("rows => rows.map(r => r.dataset.decisionId)")
        assert len(first) == 50
        tab.page.click("#older")
        tab.loaded("decisions")
        expect(tab.page.locator("#live-note")).to_have_text("paused on older decisions")
        older = tab.page.locator("tr[data-decision-id]").evaluate_all("rows => rows.map(r => r.dataset.decisionId)")
        assert len(older) == 2 and tab.page.locator("#older").is_disabled()
        newest_first = sorted(log.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        assert first + older == [r.id for r in newest_first]
        tab.page.click("#newest")
        tab.loaded("decisions")
        expect(tab.page.locator("tr[data-decision-id]")).to_have_count(50)
        tab.assert_only_the_gateway()


# -- (3) promote and revert -------------------------------------------------------------------------
def served(gw: Gateway, key: str) -> str:
    response = ask(gw, key)
    assert response.status_code == 200, response.text
    return response.headers["x-moe-router"]


def test_promote_and_revert_clicks_change_the_version_the_gateway_serves(
    browser: Browser, gateway: Gateway, postgres_url: str, router_artifact: Path, tmp_path: Path
) -> None:
    admin = issue_key(postgres_url, name="ops", tenant="acme", admin=True).key
    versions = RouterVersions(create_engine(postgres_url))
    [first] = versions.list("embedding")
    candidate = versions.register("embedding", retagged(router_artifact, tmp_path / "candidate", "v-ui"))
    assert served(gateway, admin) == f"embedding-domain@{first.version}"
    with dashboard(browser, gateway) as tab:
        tab.open("#/routers")
        tab.sign_in(admin)
        view = tab.loaded("routers")
        expect(view.locator(f'tr[data-version-id="{candidate.id}"] .pill')).to_have_text("candidate")

        tab.confirm(f'[data-action="active-{candidate.id}"]', accept=False)  # cancelled: nothing changes
        assert [v.status for v in versions.list("embedding")] == ["active", "candidate"]

        tab.confirm(f'[data-action="active-{candidate.id}"]')
        expect(tab.page.locator("#banner")).to_contain_text("v-ui is now active")
        view = tab.loaded("routers")
        expect(view.locator(f'tr[data-version-id="{candidate.id}"] .pill')).to_have_text("active")
        wait_for(
            lambda: served(gateway, admin) == "embedding-domain@v-ui",
            timeout_s=30,
            what="the gateway serving the promoted version",
        )

        tab.confirm('[data-router="embedding"] [data-action="revert"]')
        expect(tab.page.locator("#banner")).to_contain_text(f"reverted to {first.version}")
        wait_for(
            lambda: served(gateway, admin) == f"embedding-domain@{first.version}",
            timeout_s=30,
            what="the gateway serving the version reverted to",
        )
        view = tab.loaded("routers")
        expect(view.locator(f'tr[data-version-id="{candidate.id}"] .pill')).to_have_text("retired")
        tab.assert_only_the_gateway()
    assert [v.status for v in versions.list("embedding")] == ["active", "retired"]


# -- (4) a tenant's view ----------------------------------------------------------------------------
def test_a_tenant_key_sees_its_own_decisions_only_and_no_operator_view(
    browser: Browser, gateway: Gateway, postgres_url: str
) -> None:
    acme = issue_key(postgres_url, name="acme-app", tenant="acme").key
    beta = issue_key(postgres_url, name="beta-app", tenant="beta").key
    own = ask(gateway, acme).headers["x-moe-decision-id"]
    other = ask(gateway, beta, HISTORY_QUESTION).headers["x-moe-decision-id"]
    give_feedback(gateway, beta, other, score=0.2)
    recorded(postgres_url, 2)
    with dashboard(browser, gateway) as tab:
        tab.open()
        tab.sign_in(acme)
        tab.loaded("decisions")
        expect(tab.row(own)).to_be_visible()
        for view in ("experts", "routers", "evaluation"):
            expect(tab.page.locator(f'#nav a[data-view="{view}"]')).to_be_hidden()
        expect(tab.page.locator("#filters [name=tenant]")).to_be_hidden()

        # Both tenants keep asking; a poll brings acme's new decision and never beta's.
        later_other = ask(gateway, beta).headers["x-moe-decision-id"]
        later_own = ask(gateway, acme, HISTORY_QUESTION).headers["x-moe-decision-id"]
        expect(tab.row(later_own)).to_be_visible(timeout=LIVE_S * 1000)
        shown = tab.page.locator("tr[data-decision-id]").evaluate_all("rows => rows.map(r => r.dataset.decisionId)")
        assert shown == [later_own, own]
        assert other not in shown and later_other not in shown

        tab.go(f"#/decisions/{other}")  # another tenant's decision, asked for by id
        expect(tab.page.locator("#view-decision .view-error")).to_contain_text("No decision")
        tab.go("#/experts")  # an operator view, asked for by its address: the decisions view instead
        expect(tab.page).to_have_url(f"{gateway.base_url}/ui#/decisions")
        tab.loaded("decisions")
        tab.go("#/feedback")
        view = tab.loaded("feedback")
        expect(view.locator(".tile-value").first).to_have_text("0")  # beta's feedback is not acme's
        assert tab.api_calls("/ui/api/experts") == tab.api_calls("/ui/api/routers") == []
        tab.assert_only_the_gateway()


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

        with dashboard(browser, gw) as tab:
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
