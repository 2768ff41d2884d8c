"""experts/combine.py's cascade with free-form answers and `escalate: router`, on a scripted pool: which experts
are asked, in which steps, and which answer (or which escalation) comes back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from experts.combine import CascadeConfig, Combiner, Plan
from experts.pool import Answer, ExpertCall
from routers.dataset import RoutingDataset
from training.cascade import Replay, vote


class ScriptedPool:
    """Answers each expert's call with its scripted text (None: the call fails); keeps every fan-out's step."""

    def __init__(self, replies: Mapping[str, str | None]) -> None:
        self.replies = dict(replies)
        self.steps: list[list[str]] = []

    def __contains__(self, name: object) -> bool:
        return name in self.replies

    async def up_first(self, names: list[str]) -> list[str]:
        return names

    async def fan_out(
        self, calls: list[ExpertCall], experts: Sequence[str], messages: Any, params: Any, deadline_s: float
    ) -> list[Answer]:
        self.steps.append(list(experts))
        return [
            Answer(name, {"choices": [{"message": {"content": self.replies[name]}}]})
            for name in experts
            if self.replies[name]
        ]

    @property
    def asked(self) -> list[str]:
        return [name for step in self.steps for name in step]


ROUTED = ["top", "v1", "v2", "v3", "v4"]  # the router's ranking: `top` is its pick under the request's knob


async def run(
    replies: Mapping[str, str | None], agree: int = 2, candidates: Sequence[str] = ROUTED, **config: Any
) -> tuple[Plan, ScriptedPool]:
    pool = ScriptedPool({"top": "The answer is 99.", **replies})
    cascade = CascadeConfig.model_validate({"order": ["v1", "v2", "v3"], "escalate": "router", **config})
    combiner = Combiner(pool, [], {name: 0.001 for name in pool.replies})  # type: ignore[arg-type]
    plan = await combiner.cascade(cascade, agree, Plan(list(candidates), [{"role": "user", "content": "q"}]), {})
    return plan, pool


async def test_free_form_answers_written_differently_agree_and_the_last_voters_words_are_returned() -> None:
    plan, pool = await run(
        {"v1": '{"answer": "$1,200"}', "v2": "So the answer is 1200.00.", "v3": "1200"}, answers="free-form"
    )
    assert pool.steps == [["v1", "v2"]]  # agreed: neither v3 nor the router's pick is asked
    assert plan.answer is not None and plan.answer.expert == "v2"
    assert plan.recruited == ["v1", "v2"]


async def test_a_third_voter_settles_a_disagreement() -> None:
    plan, pool = await run({"v1": "\\boxed{\\frac{1}{2}}", "v2": "0.4", "v3": "x = 0.5"}, answers="free-form")
    assert pool.steps == [["v1", "v2"], ["v3"]]
    assert plan.answer is not None and plan.answer.expert == "v3"  # 0.5 twice: v1's and v3's, v3 the last


async def test_without_agreement_the_routers_top_expert_answers() -> None:
    plan, pool = await run({"v1": "12", "v2": "13", "v3": "14"}, answers="free-form")
    assert pool.asked == ["v1", "v2", "v3"] and plan.recruited == ["v1", "v2", "v3"]
    assert plan.answer is None and plan.candidates[0] == "top"  # the gateway now asks the router's pick


async def test_voters_stop_once_agreement_is_out_of_reach() -> None:
    replies = {"v1": "1", "v2": "2", "v3": "3", "v4": "1"}
    plan, pool = await run(replies, agree=3, order=["v1", "v2", "v3", "v4"], answers="free-form")
    # Three asked at once (the fewest that could agree); three answers apart leave one voter for two more votes.
    assert pool.steps == [["v1", "v2", "v3"]]
    assert plan.answer is None and plan.candidates[0] == "top"


async def test_the_routers_pick_already_asked_as_a_voter_answers_with_the_answer_in_hand() -> None:
    plan, pool = await run({"v1": "12", "v2": "13", "v3": "14"}, candidates=["v2", "top"], answers="free-form")
    assert pool.asked == ["v1", "v2", "v3"]  # no second call to v2
    assert plan.answer is not None and plan.answer.expert == "v2"


async def test_failed_and_unreadable_voters_count_for_nothing() -> None:
    # Choice answers: v1 fails, v2 names no letter; v3 alone could not make two, so it is not asked.
    plan, pool = await run({"v1": None, "v2": "I am not sure.", "v3": "The answer is (B)."})
    assert pool.steps == [["v1", "v2"]]
    assert plan.answer is None and plan.candidates[0] == "top"
    plan, pool = await run({"v1": None, "v2": "The answer is (B).", "v3": "The answer is (B)."})
    assert pool.steps == [["v1", "v2"], ["v3"]]
    assert plan.answer is not None and plan.answer.expert == "v3"


async def test_choice_answers_agree_on_their_letter_as_before() -> None:
    plan, pool = await run({"v1": "The answer is (B).", "v2": "Answer: B", "v3": "The answer is (C)."})
    assert pool.steps == [["v1", "v2"]]
    assert plan.answer is not None and plan.answer.expert == "v2"


async def test_free_form_numbers_are_not_letters_in_choice_mode() -> None:
    # "$1,200" and "1200" name no option letter: compared as choices they never agree, so the router decides.
    plan, _ = await run({"v1": "$1,200", "v2": "1200", "v3": "1,200"})
    assert plan.answer is None and plan.candidates[0] == "top"


async def test_the_default_cascade_still_votes_among_all_it_called() -> None:
    pool = ScriptedPool({"v1": "12", "v2": "13", "v3": "13.0", "top": "99"})
    cascade = CascadeConfig.model_validate({"order": ["v1", "v2", "v3"], "answers": "free-form"})
    assert cascade.escalate == "vote"
    combiner = Combiner(pool, [], {name: 0.001 for name in pool.replies})  # type: ignore[arg-type]
    plan = await combiner.cascade(cascade, 3, Plan(list(ROUTED), []), {})
    assert pool.asked == ["v1", "v2", "v3"]  # nobody reaches three; no escalation
    assert plan.answer is not None and plan.answer.expert == "v2"  # 13 by two votes to one, the earlier of them


def test_the_answer_kind_and_escalation_are_validated() -> None:
    with pytest.raises(ValueError, match="answers"):
        CascadeConfig.model_validate({"answers": "letters"})
    with pytest.raises(ValueError, match="escalate"):
        CascadeConfig.model_validate({"escalate": "top"})


@pytest.mark.parametrize(
    "recorded",
    [
        ["$1,200", "1200", "7"],
        ["12", "13", "13.0"],
        ["12", "13", "14"],
        [None, "5", "5"],
        [None, "5", None],
        ["[1,2]", "[1, 2]", "[2, 1]"],
        ["'abc'", "ABC", "abc"],
    ],
)
@pytest.mark.parametrize("agree", [2, 3])
@pytest.mark.parametrize("pick", ["top", "v2"])
async def test_the_live_cascade_asks_and_answers_as_the_offline_replay(
    recorded: list[str | None], agree: int, pick: str
) -> None:
    """One rule, two places: training/cascade.py on recorded answers and the gateway on whole replies (here the
    recorded answers inside ZeroEval-style JSON replies; a None fails the call)."""
    voters = ["v1", "v2", "v3"]
    replies = {
        name: None if text is None else json.dumps({"answer": text})
        for name, text in zip(voters, recorded, strict=True)
    }
    plan, pool = await run(
        replies, agree=agree, candidates=[pick, *[n for n in ROUTED if n != pick]], answers="free-form"
    )

    experts = (*voters, "top")
    data = RoutingDataset(
        queries=np.array(["q"], dtype=object),
        experts=experts,
        scores=np.zeros((1, 4)),
        costs=np.ones((1, 4)),
        tags=((),),
        domains=np.array([""], dtype=object),
        split=np.array(["test"]),
        answers=np.array([[*recorded, "99"]], dtype=object),
    )
    replay = Replay.of(data, data.scores, np.ones(4))
    voting = vote(replay, [0, 1, 2], agree)
    assert pool.asked == [name for name, asked in zip(experts, voting.called[0], strict=True) if asked]
    if voting.agreed[0]:
        assert plan.answer is not None and plan.answer.expert == experts[voting.answer_of[0]]
    elif voting.called[0, experts.index(pick)]:
        assert plan.answer is not None and plan.answer.expert == pick  # the pick's answer in hand
    else:
        assert plan.answer is None and plan.candidates[0] == pick
