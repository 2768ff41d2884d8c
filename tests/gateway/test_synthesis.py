"""Synthesis virtual models: recruited experts answer at once, an aggregator writes the final answer.

The scripted upstream echoes its system message, so the aggregator's reply shows exactly which
answers it was given.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config import GatewayConfig
from tests.gateway.support import MATH_QUESTION, Gateway, decisions, expert, running_gateway, wait_for


def synthesis_config(experts: list[dict[str, Any]], artifact: Path, **synthesis: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "experts": experts,
        "routers": [{"name": "embedding", "artifact": str(artifact)}],
        "virtual_models": [{"name": "moe-synth", "router": "embedding", "synthesis": synthesis}],
    })


@pytest.fixture
def experts(upstream: str) -> list[dict[str, Any]]:
    v1 = f"{upstream}/v1"
    return [
        expert("stem", "echo-stem", v1, price_per_mtok=0.2, domains=["math", "physics"]),
        expert("humanities", "echo-humanities", v1, price_per_mtok=0.1, domains=["history", "law"]),
        expert("general", "echo-general", v1, price_per_mtok=0.1, domains=["other"]),
    ]


@pytest.fixture
def gateway(experts: list[dict[str, Any]], router_artifact: Path, database_url: str, tmp_path: Path) -> Iterator[Gateway]:
    config = synthesis_config(experts, router_artifact, k=3, aggregator="general", deadline_s=10)
    with running_gateway(config, database_url, tmp_path) as gw:
        yield gw


def test_recruited_answers_reach_the_aggregator_and_every_call_is_recorded(gateway: Gateway, database_url: str) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="moe-synth", messages=[{"role": "user", "content": MATH_QUESTION}], max_tokens=1000
    )
    answer = raw.parse().choices[0].message.content
    assert raw.headers["x-moe-expert"] == "general"
    assert raw.headers["x-moe-recruited"].split(",")[0] == "stem"  # routed order: the maths expert first
    assert sorted(raw.headers["x-moe-recruited"].split(",")) == ["general", "humanities", "stem"]
    assert answer.startswith("[echo-general|You have been provided with a set of responses")
    for name in ("stem", "humanities", "general"):
        assert f"[echo-{name}] {MATH_QUESTION}" in answer  # each expert's own answer, in the prompt

    wait_for(lambda: len(decisions(database_url)) == 1, what="the record")
    (row,) = decisions(database_url)
    assert row.chosen_expert == "general" and row.status == "ok"
    assert [c.attempt for c in row.calls] == [0, 1, 2, 3]
    assert sorted(c.expert for c in row.calls[:3]) == ["general", "humanities", "stem"]
    assert row.calls[3].expert == "general" and all(c.status == "ok" for c in row.calls)
    prices = {"stem": 0.2, "humanities": 0.1, "general": 0.1}
    expected = sum((c.prompt_tokens + c.completion_tokens) * prices[c.expert] / 1e6 for c in row.calls)
    assert row.cost_usd == pytest.approx(expected)  # the fan-out is paid for too


def test_the_synthesis_streams_through_the_openai_sdk(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="moe-synth", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert f"[echo-humanities] {MATH_QUESTION}" in text and chunks[-1].usage is not None


def test_an_expert_past_the_deadline_is_left_out(
    experts: list[dict[str, Any]], upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    experts[1] = expert("humanities", "slow-humanities", f"{upstream}/v1", domains=["history", "law"])
    config = synthesis_config(experts, router_artifact, k=3, aggregator="general", deadline_s=1)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        started = time.monotonic()
        answer = client.chat.completions.create(
            model="moe-synth", messages=[{"role": "user", "content": MATH_QUESTION}]
        ).choices[0].message.content
        assert time.monotonic() - started < 4  # the slow expert takes 5 s
    assert f"[echo-stem] {MATH_QUESTION}" in answer and "slow-humanities" not in answer
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the record")
    statuses = {c.expert: c.status for c in decisions(sqlite_url)[0].calls[:3]}
    assert statuses == {"stem": "ok", "humanities": "cancelled", "general": "ok"}


def test_a_cost_budget_recruits_fewer_experts(
    experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    # With no measured costs in this router's manifest, a query is priced at 1,000 tokens: stem 0.2e-3 USD,
    # the others 0.1e-3; 0.35e-3 admits stem and one more.
    config = synthesis_config(experts, router_artifact, k=3, aggregator="general", max_cost_usd=0.35e-3)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        raw = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0).chat.completions.with_raw_response.create(
            model="moe-synth", messages=[{"role": "user", "content": MATH_QUESTION}]
        )
    recruited = raw.headers["x-moe-recruited"].split(",")
    assert len(recruited) == 2 and recruited[0] == "stem"


def test_an_unknown_aggregator_is_a_config_error(experts: list[dict[str, Any]], router_artifact: Path) -> None:
    with pytest.raises(ValueError, match=r"virtual_models.0.synthesis.aggregator: 'oracle' is not an expert"):
        synthesis_config(experts, router_artifact, aggregator="oracle")
