"""Vote and cascade virtual models: several experts' extracted choices decide which answer is returned.

The scripted upstream echoes its system message, so an expert whose system prompt is "The answer is
(B)." answers B, and the reply shows which expert wrote it. `RECEIVED` tells which experts the
gateway called and which it never did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from bench.upstream import RECEIVED
from experts.aggregate import answers_needed, expert_weights, log_odds_weight, pick_answer
from gateway.config import ConfigError, GatewayConfig, load_config
from migrations.schema import DecisionRow
from tests.gateway.support import MATH_QUESTION, Gateway, decisions, expert, running_gateway, wait_for

PRICES = {"cheap": 0.1, "mid": 0.2, "dear": 1.0, "flaky": 0.05, "rambler": 5.0}
RAMBLE = "Let me think it through step by step before I commit to anything at all."


def says(letter: str) -> str:
    return f"The answer is ({letter})."


def gateway_config(experts: list[dict[str, Any]], artifact: Path, **virtual: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "experts": experts,
        "routers": [{"name": "embedding", "artifact": str(artifact)}],
        "virtual_models": [{"name": name, "router": "embedding", **vm} for name, vm in virtual.items()],
    })


def ask(gw: Gateway, model: str) -> tuple[str, dict[str, str]]:
    raw = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def record(database_url: str, decision_id: str) -> DecisionRow:
    def find() -> DecisionRow | None:
        return next((row for row in decisions(database_url) if row.id == decision_id), None)

    wait_for(lambda: find() is not None, what=f"decision {decision_id}")
    row = find()
    assert row is not None
    return row


def reply(model: str, letter: str | None) -> str:
    """What the scripted upstream answers as `model` with the system prompt `says(letter)`."""
    return f"[{model}|{says(letter)}] {MATH_QUESTION}" if letter else f"[{model}] {MATH_QUESTION}"


# -- the pure rules --------------------------------------------------------------------------------
def test_weights_are_log_odds_of_dev_accuracy_and_unknown_experts_vote_as_an_average_one() -> None:
    assert expert_weights(["a", "b"], {}) == [1.0, 1.0]
    weights = expert_weights(["a", "b", "c"], {"a": 0.8, "b": 0.4}, n_options=4)
    mean = (log_odds_weight(0.8, 4) + log_odds_weight(0.4, 4)) / 2
    assert weights == pytest.approx([log_odds_weight(0.8, 4), log_odds_weight(0.4, 4), mean])


def test_pick_answer_returns_the_heaviest_answer_naming_the_weighted_majority() -> None:
    texts = [says("B"), says("C"), f"So: {says('C')}"]
    assert pick_answer(texts, [1.0, 1.0, 1.0]) == 1  # C by two votes to one; equal weights: the earlier C answer
    assert pick_answer(texts, [1.0, 0.4, 0.7]) == 2  # C by 1.1 to 1.0, and its heaviest answer is the third
    assert pick_answer(texts, [2.0, 0.4, 0.7]) == 0  # B by 2.0 to 1.1


def test_a_tie_goes_to_the_heavier_then_better_ranked_answer_and_no_choice_to_the_first() -> None:
    assert pick_answer([says("B"), says("C")], [1.0, 1.0]) == 0
    assert pick_answer([says("B"), says("C")], [0.5, 1.0]) == 1
    assert pick_answer(["I am not sure.", "Nor am I."], [0.5, 1.0]) == 0


@pytest.mark.parametrize(
    ("choices", "agree", "needed"),
    [([], 2, 2), (["B"], 2, 1), (["B", "C"], 2, 1), (["B", "B"], 2, 0), ([None, None], 2, 2),
     (["B", "B", "C"], 3, 1), (["B", "C"], 3, 2), ([], 1, 1), (["B"], 1, 0)],
)
def test_answers_needed_is_the_fewest_more_answers_that_could_agree(
    choices: list[str | None], agree: int, needed: int
) -> None:
    assert answers_needed(choices, agree) == needed


# -- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("virtual", "message"),
    [
        ({"vote": {}, "cascade": {}}, "virtual_models.0: vote and cascade exclude each other"),
        ({"synthesis": {}, "vote": {}}, "virtual_models.0: synthesis and vote exclude each other"),
        ({"vote": {"accuracy": {"oracle": 0.9}}}, "virtual_models.0.vote.accuracy: 'oracle' is not an expert"),
        ({"vote": {"accuracy": {"a": 1.2}}}, "virtual_models.0.vote.accuracy.a: Input should be less than 1"),
        ({"vote": {"k": 1}}, "virtual_models.0.vote.k"),
        ({"cascade": {"order": ["a", "oracle"]}}, "virtual_models.0.cascade.order: 'oracle' is not an expert"),
        ({"cascade": {"order": ["a", "a"]}}, "virtual_models.0.cascade.order: duplicate name 'a'"),
        ({"cascade": {"order": ["a"]}}, "virtual_models.0.cascade.order"),
        ({"cascade": {"agree": 0}}, "virtual_models.0.cascade.agree"),
        ({"cascade": {"accuracy": {"oracle": 0.5}}}, "virtual_models.0.cascade.accuracy: 'oracle' is not an expert"),
        ({"cascade": {}, "policy": "0.3"}, "virtual_models.0.policy: a cascade takes no cost knob"),
    ],
)
def test_invalid_aggregation_names_the_field(tmp_path: Path, virtual: dict[str, Any], message: str) -> None:
    config = {
        "experts": [{"name": name, "model": "m", "api_base": "http://127.0.0.1:9/v1"} for name in ("a", "b")],
        "routers": [{"name": "r", "artifact": "var/routers/x"}],
        "virtual_models": [{"name": "moe-panel", "router": "r", **virtual}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(path)


# -- vote ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vote_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('vote') / 'decisions.db'}"


@pytest.fixture(scope="module")
def voting(upstream: str, router_artifact: Path, vote_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The maths expert answers B, the two others C; the router ranks the maths expert first."""
    v1 = f"{upstream}/v1"
    experts = [
        expert("stem", "vote-stem", v1, price_per_mtok=0.2, domains=["math", "physics"], system_prompt=says("B")),
        expert("humanities", "vote-humanities", v1, price_per_mtok=0.1, domains=["history", "law"],
               system_prompt=says("C")),
        expert("general", "vote-general", v1, price_per_mtok=0.1, domains=["other"], system_prompt=says("C")),
    ]
    config = gateway_config(
        experts, router_artifact,
        **{"moe-vote": {"vote": {"k": 3}},
           "moe-vote-weighted": {"vote": {"k": 3, "accuracy": {"stem": 0.8, "humanities": 0.3, "general": 0.3}}},
           "moe-vote-pair": {"vote": {"k": 2}}},
    )
    with running_gateway(config, vote_db, tmp_path_factory.mktemp("vote-gw")) as gw:
        yield gw


def test_vote_returns_the_majority_experts_own_text_and_records_every_call(voting: Gateway, vote_db: str) -> None:
    answer, headers = ask(voting, "moe-vote")
    winner = headers["x-moe-expert"]
    assert winner in ("humanities", "general")  # the two that said C
    assert answer == reply(f"vote-{winner}", "C")
    assert sorted(headers["x-moe-recruited"].split(",")) == ["general", "humanities", "stem"]
    row = record(vote_db, headers["x-moe-decision-id"])
    assert row.status == "ok" and row.chosen_expert == winner and row.virtual_model == "moe-vote"
    assert sorted(c.expert for c in row.calls) == ["general", "humanities", "stem"]  # one row each, nothing more
    assert all(c.status == "ok" for c in row.calls)
    expected = sum((c.prompt_tokens + c.completion_tokens) * {"stem": 0.2}.get(c.expert, 0.1) / 1e6 for c in row.calls)
    assert row.cost_usd == pytest.approx(expected)


def test_weights_from_dev_accuracy_outvote_the_majority(voting: Gateway) -> None:
    # log-odds: stem 0.8 -> 3.58; 0.3 -> 1.35 each, so C's two votes weigh 2.70 against B's 3.58.
    answer, headers = ask(voting, "moe-vote-weighted")
    assert headers["x-moe-expert"] == "stem" and answer == reply("vote-stem", "B")


def test_a_tie_goes_to_the_top_ranked_expert(voting: Gateway) -> None:
    answer, headers = ask(voting, "moe-vote-pair")
    recruited = headers["x-moe-recruited"].split(",")
    assert recruited[0] == "stem" and len(recruited) == 2  # B against C, one vote each
    assert headers["x-moe-expert"] == "stem" and answer == reply("vote-stem", "B")


@pytest.mark.parametrize("model", ["moe-vote", "moe-vote-weighted"])
def test_the_vote_streams_through_the_openai_sdk(voting: Gateway, vote_db: str, model: str) -> None:
    expected, _ = ask(voting, model)
    client = openai.OpenAI(base_url=voting.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": MATH_QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(expected.split())
    assert {c.model for c in chunks} == {raw.headers["x-moe-expert"]}
    row = record(vote_db, raw.headers["x-moe-decision-id"])
    assert row.stream and row.status == "ok" and len(row.calls) == 3


@pytest.fixture(scope="module")
def unsure(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """No expert names a choice, and the humanities expert fails."""
    v1 = f"{upstream}/v1"
    experts = [
        expert("stem", "unsure-stem", v1, domains=["math", "physics"]),
        expert("humanities", "fail500-humanities", v1, domains=["history", "law"]),
        expert("general", "unsure-general", v1, domains=["other"]),
    ]
    database = f"sqlite:///{tmp_path_factory.mktemp('unsure') / 'decisions.db'}"
    config = gateway_config(experts, router_artifact, **{"moe-vote": {"vote": {"k": 3}}})
    with running_gateway(config, database, tmp_path_factory.mktemp("unsure-gw")) as gw:
        yield gw, database


def test_without_any_choice_the_top_ranked_experts_answer_is_returned(unsure: tuple[Gateway, str]) -> None:
    answer, headers = ask(unsure[0], "moe-vote")
    assert headers["x-moe-expert"] == "stem" and answer == reply("unsure-stem", None)


def test_a_failing_expert_is_recorded_and_the_others_still_answer(unsure: tuple[Gateway, str]) -> None:
    gw, database = unsure
    _, headers = ask(gw, "moe-vote")
    row = record(database, headers["x-moe-decision-id"])
    assert row.status == "ok" and row.http_status == 200
    assert {c.expert: c.status for c in row.calls} == {"stem": "ok", "humanities": "upstream_5xx", "general": "ok"}
    assert "upstream exploded" in next(c.error for c in row.calls if c.expert == "humanities")


# -- cascade ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cascade_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('cascade') / 'decisions.db'}"


@pytest.fixture(scope="module")
def cascading(upstream: str, router_artifact: Path, cascade_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """cheap and mid answer B, dear answers C; flaky, the cheapest, always fails (only `moe-cheapest` asks it);
    rambler, the dearest, answers B after 14 words (only the `moe-ramble*` cascades ask it)."""
    v1 = f"{upstream}/v1"
    experts = [
        expert("dear", "cascade-dear", v1, price_per_mtok=PRICES["dear"], domains=["math"], system_prompt=says("C")),
        expert("mid", "cascade-mid", v1, price_per_mtok=PRICES["mid"], domains=["law"], system_prompt=says("B")),
        expert("cheap", "cascade-cheap", v1, price_per_mtok=PRICES["cheap"], domains=["other"], system_prompt=says("B")),
        expert("flaky", "fail500-cascade", v1, price_per_mtok=PRICES["flaky"], domains=["history"]),
        expert("rambler", "cascade-rambler", v1, price_per_mtok=PRICES["rambler"], domains=["biology"],
               system_prompt=f"{RAMBLE} {says('B')}"),
    ]
    config = gateway_config(
        experts, router_artifact,
        **{"moe-cascade": {"cascade": {"order": ["cheap", "mid", "dear"]}},
           "moe-cheapest": {"cascade": {}},
           "moe-escalate": {"cascade": {"order": ["cheap", "dear", "mid"]}},
           "moe-ramble": {"cascade": {"order": ["rambler", "mid", "dear"]}},
           "moe-ramble-capped": {"cascade": {"order": ["rambler", "mid", "dear"], "answer_max_tokens": 8}}},
    )
    with running_gateway(config, cascade_db, tmp_path_factory.mktemp("cascade-gw")) as gw:
        yield gw


def called(before: dict[str, int]) -> dict[str, int]:
    """Requests the upstream received per cascade expert since `before`."""
    return {name: RECEIVED[model] - before.get(model, 0) for name, model in
            (("cheap", "cascade-cheap"), ("mid", "cascade-mid"), ("dear", "cascade-dear"), ("flaky", "fail500-cascade"))}


def test_the_cascade_stops_once_two_experts_agree(cascading: Gateway, cascade_db: str) -> None:
    before = dict(RECEIVED)
    answer, headers = ask(cascading, "moe-cascade")
    assert called(before) == {"cheap": 1, "mid": 1, "dear": 0, "flaky": 0}  # the third is never asked
    assert headers["x-moe-recruited"] == "cheap,mid" and headers["x-moe-expert"] == "cheap"
    assert answer == reply("cascade-cheap", "B")
    row = record(cascade_db, headers["x-moe-decision-id"])
    assert sorted(c.expert for c in row.calls) == ["cheap", "mid"] and row.policy == "2"
    expected = sum((c.prompt_tokens + c.completion_tokens) * PRICES[c.expert] / 1e6 for c in row.calls)
    assert row.cost_usd == pytest.approx(expected) and row.cost_usd > 0


def test_the_default_order_is_cheapest_first_and_a_failure_escalates(cascading: Gateway, cascade_db: str) -> None:
    before = dict(RECEIVED)
    answer, headers = ask(cascading, "moe-cheapest")
    # flaky (0.05) and cheap (0.1) first; flaky fails, so one more is asked: mid (0.2), which agrees with cheap.
    assert headers["x-moe-recruited"] == "flaky,cheap,mid"
    assert called(before) == {"cheap": 1, "mid": 1, "dear": 0, "flaky": 1}
    assert answer == reply("cascade-cheap", "B")
    row = record(cascade_db, headers["x-moe-decision-id"])
    assert {c.expert: c.status for c in row.calls} == {"flaky": "upstream_5xx", "cheap": "ok", "mid": "ok"}
    assert row.status == "ok" and row.chosen_expert == "cheap"


def test_disagreement_escalates_to_the_next_expert(cascading: Gateway, cascade_db: str) -> None:
    before = dict(RECEIVED)
    answer, headers = ask(cascading, "moe-escalate")
    assert called(before) == {"cheap": 1, "mid": 1, "dear": 1, "flaky": 0}
    assert headers["x-moe-recruited"] == "cheap,dear,mid" and answer == reply("cascade-cheap", "B")
    row = record(cascade_db, headers["x-moe-decision-id"])
    assert [c.expert for c in row.calls][2] == "mid" and len(row.calls) == 3  # mid only after cheap and dear disagreed


@pytest.mark.parametrize(
    ("model", "asked"),
    [("moe-cascade:1", {"cheap": 1, "mid": 0, "dear": 0}),
     ("moe-cascade:2", {"cheap": 1, "mid": 1, "dear": 0}),
     ("moe-cascade:3", {"cheap": 1, "mid": 1, "dear": 1})],
)
def test_the_per_request_knob_sets_how_many_must_agree(cascading: Gateway, model: str, asked: dict[str, int]) -> None:
    before = dict(RECEIVED)
    answer, headers = ask(cascading, model)
    assert called(before) == {**asked, "flaky": 0}
    assert answer == reply("cascade-cheap", "B")  # with :3 nobody reaches three, and B still wins the vote


def test_a_bad_cascade_knob_is_a_400_naming_the_model(cascading: Gateway) -> None:
    client = openai.OpenAI(base_url=cascading.v1, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="moe-cascade:zero", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_cascade_knob" and caught.value.param == "model"


def test_the_cascade_streams_through_the_openai_sdk(cascading: Gateway, cascade_db: str) -> None:
    client = openai.OpenAI(base_url=cascading.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="moe-escalate", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply("cascade-cheap", "B")
    assert chunks[-1].usage is not None and raw.headers["x-moe-recruited"] == "cheap,dear,mid"
    row = record(cascade_db, raw.headers["x-moe-decision-id"])
    assert row.stream and row.status == "ok" and [c.status for c in row.calls] == ["ok", "ok", "ok"]


def test_an_answer_cut_at_answer_max_tokens_before_naming_a_choice_abstains_and_escalates(
    cascading: Gateway, cascade_db: str
) -> None:
    """Uncut, the rambler's late B agrees with mid's; cut at 8 tokens it names nothing, so dear is asked too."""
    asked = ("cascade-rambler", "cascade-mid", "cascade-dear")
    before = dict(RECEIVED)
    ask(cascading, "moe-ramble")
    assert [RECEIVED[m] - before.get(m, 0) for m in asked] == [1, 1, 0]

    before = dict(RECEIVED)
    answer, headers = ask(cascading, "moe-ramble-capped")
    assert [RECEIVED[m] - before.get(m, 0) for m in asked] == [1, 1, 1]
    # mid's B against dear's C: the tie goes to the earlier answer, cut at 8 tokens like every answer.
    assert answer == " ".join(reply("cascade-mid", "B").split()[:8])
    row = record(cascade_db, headers["x-moe-decision-id"])
    assert {c.expert: c.completion_tokens for c in row.calls}["rambler"] == 8


def test_a_request_max_tokens_below_the_cap_wins(cascading: Gateway, cascade_db: str) -> None:
    raw = openai.OpenAI(base_url=cascading.v1, api_key="unused", max_retries=0).chat.completions.with_raw_response.create(
        model="moe-ramble-capped", messages=[{"role": "user", "content": MATH_QUESTION}], max_tokens=5
    )
    row = record(cascade_db, raw.headers["x-moe-decision-id"])
    assert max(c.completion_tokens for c in row.calls) == 5
