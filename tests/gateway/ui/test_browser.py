"""The dashboard at /ui in a real browser: Debian's Chromium, headless, driven by Playwright against a real gateway
(PostgreSQL, the scripted upstream, a trained router) and its /ui/api. Sign-in and refusal, live decisions with
their expert and cost, promote and revert clicks that change the version the gateway serves, and a tenant's
narrower view."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect
from sqlalchemy import create_engine

from gateway.keys.store import KeyStore
from migrations.router_versions import RouterVersions
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, Gateway, issue_key, retagged, wait_for
from tests.gateway.ui.support import QUESTIONS, give_feedback, open_tab, recorded

LIVE_S = 10  # the decisions view polls every 3 s: a new decision shows within one poll, with room for a slow machine


def usd(value: float) -> str:
    """The page's cost format (app.js `usd`): cents, or three significant digits below a dollar."""
    if value == 0:
        return "$0"
    digits = 2 if value >= 1 else max(2, 2 - math.floor(math.log10(value)))
    return f"${value:.{digits}f}"


def ask(gw: Gateway, key: str, question: str = MATH_QUESTION, model: str = "moe-auto") -> httpx.Response:
    return httpx.post(
        f"{gw.v1}/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": question}]},
    )


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
    with open_tab(browser, gateway) as tab:
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
    with open_tab(browser, gateway) as tab:
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
    with open_tab(browser, gateway) as tab:
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
    with open_tab(browser, gateway) as tab:
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
