"""What the dashboard's tests share: a client of /ui/api with an admin key and two tenants' keys, decisions written
straight to the log, and a browser tab on /ui that records every request it makes and every error it reports."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect
from sqlalchemy import create_engine, insert

from migrations.schema import DecisionRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    issue_key,
    routed_config,
    running_gateway,
    wait_for,
)

# -- the JSON API (/ui/api) --------------------------------------------------------------------------------------------
STEM = ["math", "physics", "chemistry", "engineering", "computer science"]
PRICES = {"stem": 0.2, "humanities": 0.1, "general": 0.3}


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


# -- the page in a browser ---------------------------------------------------------------------------------------------
VIEWPORT = {"width": 1280, "height": 800}
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


@dataclass
class Tab:
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
def open_tab(browser: Browser, gw: Gateway) -> Iterator[Tab]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    tab = Tab(page, gw.base_url)
    page.on("request", lambda request: tab.requested.append(request.url))
    page.on("pageerror", lambda error: tab.problems.append(f"uncaught: {error}"))
    page.on("console", tab.heard)
    try:
        yield tab
    finally:
        context.close()


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
