"""Feedback on decisions (POST /v1/feedback) against real PostgreSQL and SQLite, and exploration's propensities."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import GatewayConfig
from migrations.schema import FeedbackRow
from routers.exploration import Choice, choose
from tests.gateway.support import (
    MATH_QUESTION,
    Gateway,
    decisions,
    issue_key,
    routed_config,
    rows,
    running_gateway,
    wait_for,
)


def feedback_rows(database_url: str) -> list[FeedbackRow]:
    return rows(database_url, FeedbackRow, FeedbackRow.id)


def ask(gw: Gateway, key: str | None = None, model: str = "moe-auto") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{gw.v1}/chat/completions", headers=headers, timeout=30,
                          json={"model": model, "messages": [{"role": "user", "content": MATH_QUESTION}]})
    assert response.status_code == 200, response.text
    return response


def feedback(gw: Gateway, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gw.v1}/feedback", headers=headers, json=body, timeout=30)


@pytest.fixture
def keyed(healthy_experts: list[dict[str, Any]], router_artifact: Path, database_url: str,
          tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, database_url, tmp_path, moe_require_api_key=True) as gw:
        yield gw, database_url


def test_only_the_requests_key_its_tenant_or_an_admin_may_give_feedback(keyed: tuple[Gateway, str]) -> None:
    gw, url = keyed
    owner, colleague = issue_key(url, tenant="acme"), issue_key(url, name="colleague", tenant="acme")
    stranger, admin = issue_key(url, name="stranger", tenant="globex"), issue_key(url, name="root", tenant="ops", admin=True)
    decision = ask(gw, owner.key).headers["x-moe-decision-id"]

    # At once, before the decision log has written the decision (it knows who made it), and again after.
    first = feedback(gw, {"decision_id": decision, "thumbs": "up"}, owner.key)
    assert first.status_code == 200, first.text
    assert first.json()["score"] == 1.0 and first.json()["source"] == "user"
    wait_for(lambda: len(decisions(url)) == 1, what="the decision written")

    refused = feedback(gw, {"decision_id": decision, "score": 0.0}, stranger.key)
    assert refused.status_code == 404  # as if there were no such decision: nothing about it leaks
    assert refused.json()["error"]["code"] == "decision_not_found"
    assert feedback(gw, {"decision_id": "no-such-decision", "score": 0.5}, owner.key).status_code == 404
    assert feedback(gw, {"decision_id": decision, "score": 0.5}, colleague.key).status_code == 200
    judged = feedback(gw, {"decision_id": decision, "score": 0.25, "source": "judge", "expert": "general"}, admin.key)
    assert judged.status_code == 200
    assert feedback(gw, {"decision_id": decision, "score": 0.25}).status_code == 401  # no key at all

    rows = feedback_rows(url)
    # One row per (decision, source): the colleague's replaced the owner's; the stranger changed nothing.
    assert [(r.source, r.score, r.tenant, r.expert) for r in rows] == [
        ("user", 0.5, "acme", None), ("judge", 0.25, "ops", "general")]


def test_feedback_is_idempotent_and_takes_openai_metadata(keyed: tuple[Gateway, str]) -> None:
    gw, url = keyed
    key = issue_key(url)
    decision = ask(gw, key.key).headers["x-moe-decision-id"]
    body = {"metadata": {"decision_id": decision, "score": "0.75", "comment": "close"}}
    once, twice = feedback(gw, body, key.key), feedback(gw, body, key.key)
    assert once.status_code == twice.status_code == 200, once.text
    assert once.json()["id"] == twice.json()["id"]
    assert (twice.json()["score"], twice.json()["comment"]) == (0.75, "close")
    assert len(feedback_rows(url)) == 1


@pytest.mark.parametrize("body, param", [
    ({"score": 0.5}, "decision_id"),
    ({"decision_id": "d", "score": 1.5}, "score"),
    ({"decision_id": "d", "score": True}, "score"),
    ({"decision_id": "d"}, None),  # neither score nor thumbs
    ({"decision_id": "d", "score": 1, "thumbs": "up"}, None),  # both
    ({"decision_id": "d", "thumbs": "sideways"}, "thumbs"),
    ({"decision_id": "d", "score": 1, "source": "Has Spaces"}, "source"),
    ({"metadata": {"decision_id": "d", "score": "high"}}, None),
    ({"decision_id": "d", "score": 1, "surprise": 1}, "surprise"),
])
def test_bad_feedback_is_a_400_naming_the_field(keyed: tuple[Gateway, str], body: dict[str, Any],
                                                param: str | None) -> None:
    gw, url = keyed
    response = feedback(gw, body, issue_key(url).key)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    if param is not None:
        assert error["param"] == param


def test_feedback_without_keys_is_open_for_decisions_made_without_keys(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path) as gw:
        decision = ask(gw).headers["x-moe-decision-id"]
        assert feedback(gw, {"decision_id": decision, "thumbs": "down"}).json()["score"] == 0.0


def test_exploration_marks_its_choices_and_logs_their_propensities(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    config = GatewayConfig.model_validate({
        "experts": healthy_experts,
        "routers": [{"name": "embedding", "artifact": str(router_artifact)}],
        "virtual_models": [{"name": "moe-auto", "router": "embedding"},
                           {"name": "moe-explore", "router": "embedding", "exploration": {"epsilon": 0.5}}],
    })
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        plain = [ask(gw) for _ in range(5)]
        explored = [ask(gw, model="moe-explore") for _ in range(40)]
        wait_for(lambda: len(decisions(sqlite_url)) == 45, what="every decision written")
    assert not any("x-moe-explored" in r.headers for r in plain)
    marked = {r.headers["x-moe-decision-id"] for r in explored if r.headers.get("x-moe-explored") == "true"}
    assert 5 <= len(marked) <= 35  # epsilon 0.5 of 40: far outside this is a broken draw
    for record in decisions(sqlite_url):
        if record.virtual_model == "moe-auto":
            assert (record.propensity, record.explored) == (1.0, False)
        elif record.id in marked:  # one of the two experts the router did not put first, drawn evenly
            assert (record.propensity, record.explored) == (0.25, True)
            assert record.chosen_expert != "stem"  # the router's choice for a maths question
        else:
            assert (record.propensity, record.explored) == (0.5, False)
            assert record.chosen_expert == "stem"


def test_a_choice_is_drawn_with_the_propensity_it_reports() -> None:
    ranked, scores = ["a", "b", "c"], [0.6, 0.3, 0.1]
    assert choose(ranked, scores, 0.0) == Choice(ranked, 1.0, False)
    counts: dict[str, int] = {}
    rng = random.Random(7)
    for _ in range(20_000):
        choice = choose(ranked, scores, 0.3, "scores", rng)
        counts[choice.order[0]] = counts.get(choice.order[0], 0) + 1
        expected = {"a": 0.7, "b": 0.3 * 0.75, "c": 0.3 * 0.25}[choice.order[0]]
        assert choice.propensity == pytest.approx(expected)
        assert sorted(choice.order) == ranked and choice.explored == (choice.order[0] != "a")
    for name, share in {"a": 0.7, "b": 0.225, "c": 0.075}.items():
        assert counts[name] / 20_000 == pytest.approx(share, abs=0.015)
    assert choose(["only"], [1.0], 0.5) == choose(["only"], [1.0], 0.0)  # one expert: nothing to explore
