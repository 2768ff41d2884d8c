"""The dashboard's decisions (/ui/api/decisions) in SQLite and PostgreSQL: decisions made by real requests, scoped
to the key's tenant and filtered, pages that hold every decision once, and a decision's expert calls and feedback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.ui.queries import Cursor
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, decisions
from tests.gateway.ui.support import PRICES, Dashboard, as_utc, insert_decisions


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
