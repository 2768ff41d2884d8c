"""Several experts for one answer, on top of the pool: synthesis (an aggregator writes the answer from the
recruited experts' answers, Symbolic-MoE), a weighted vote, and a cascade (cheapest first until enough agree;
then, with `escalate: router`, the router's pick when they do not).

Each takes a `Plan` (the experts to try, best first, and the conversation) and returns the plan to carry
out: another conversation and order (synthesis, an escalating cascade), or an answer already in hand (vote,
cascade). The rule for choices, free-form answers, weights and agreement is experts/aggregate.py's; the
escalating cascade is the one training/cascade.py replays and tunes offline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import Field

from experts.aggregate import AnswerKind, answers_needed, expert_weights, pick_answer, read_answer, synthesis_messages
from experts.pool import Answer, ExpertCall, ExpertPool
from experts.registry import Strict


class _Budgeted(Strict):
    """Several experts asked for one answer: how long they may take and what they may cost."""

    deadline_s: float = Field(30.0, gt=0, description="how long the experts may take; later answers are left out")
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="call experts in order while the router's expected USD per query of those called stays within this",
    )


class _Recruiting(_Budgeted):
    k: int = Field(3, ge=2, description="experts recruited: the router's recruited set, else its top k")


class _Weighted(Strict):
    """Experts naming a choice: how much each one's choice counts (the log-odds of its accuracy on dev
    questions) and how long each may answer."""

    accuracy: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=dict,
        description="dev accuracy per expert; an expert left out votes as an average listed one; none listed: equal weights",
    )
    options: int = Field(10, ge=2, le=10, description="answer options per question (A..J at most), for the log-odds")
    answers: AnswerKind = Field(
        "choice",
        description="what is compared: the option letter (choice), or the final answer as a normalised number, "
        "short string or code output (free-form)",
    )
    # A small expert that has not committed to a choice by a few hundred tokens is rarely right, and its ramble
    # is what a cascade pays most for: cut, it abstains and the next expert is asked (python -m bench.aggregation).
    answer_max_tokens: int | None = Field(
        None,
        ge=1,
        description="cut each expert's answer at this many tokens (the request's max_tokens, if lower, wins)",
    )


class SynthesisConfig(_Recruiting):
    """Recruit several experts, then let an aggregator expert write the answer from theirs (Symbolic-MoE)."""

    aggregator: str | None = Field(
        None, description="expert writing the final answer; default: the router's aggregator, else its top choice"
    )


class VoteConfig(_Recruiting, _Weighted):
    """Recruit several experts; the answer is the heaviest one naming the weighted-majority choice."""


class CascadeConfig(_Budgeted, _Weighted):
    """Cheapest expert first until `agree` called experts name the same answer. Then (`escalate: vote`) the vote
    among those called; or (`escalate: router`) the `order` are voters, and when they can no longer agree the
    router's top expert answers (the request's first candidate, ranked under its cost knob)."""

    order: Annotated[tuple[str, ...], Field(min_length=2)] | None = Field(
        None, description="experts in calling order (the voters); default: every expert, cheapest expected cost first"
    )
    agree: int = Field(
        2, ge=1, description="called experts that must name one choice to stop; `<name>:<n>` per request"
    )
    escalate: Literal["vote", "router"] = Field(
        "vote",
        description="without agreement: vote among every expert of the order (vote), or stop asking voters once "
        "agreement is out of reach and let the router's top expert answer (router)",
    )


@dataclass(frozen=True)
class Plan:
    """How a request gets its answer: try `candidates` in order on `messages`, unless a vote or a cascade already
    holds the `answer` (its call recorded). `recruited`: the experts the router (or the combination) recruited."""

    candidates: list[str]
    messages: list[dict[str, Any]]
    recruited: list[str] = field(default_factory=list)
    answer: Answer | None = None


@dataclass(frozen=True)
class Combiner:
    """Combining on one request: its pool, where its call rows go, and what each expert is expected to cost (USD
    per query, from the router)."""

    pool: ExpertPool
    calls: list[ExpertCall]
    expected_cost: Mapping[str, float]

    async def synthesise(
        self, synthesis: SynthesisConfig, plan: Plan, params: Mapping[str, Any], default_aggregator: str | None
    ) -> Plan:
        """The aggregator expert answers a conversation holding the recruited experts' answers."""
        recruited, answers = await self._ask_recruited(synthesis, plan, params)
        if not answers:
            return replace(plan, recruited=recruited)
        aggregator = synthesis.aggregator or default_aggregator
        if aggregator not in self.pool:
            aggregator = plan.candidates[0]
        return Plan(
            [aggregator, *[c for c in plan.candidates if c != aggregator]],
            synthesis_messages(plan.messages, [(a.expert, a.text) for a in answers]),
            recruited,
        )

    async def vote(self, vote: VoteConfig, plan: Plan, params: Mapping[str, Any]) -> Plan:
        """The recruited experts' weighted-majority answer."""
        recruited, answers = await self._ask_recruited(vote, plan, capped(params, vote))
        return replace(plan, recruited=recruited, answer=pick(answers, vote) if answers else None)

    async def cascade(self, cascade: CascadeConfig, agree: int, plan: Plan, params: Mapping[str, Any]) -> Plan:
        """Cheapest first, until `agree` answers name one choice; the answer is the vote of those called, or with
        `escalate: router` the agreed answer (in the words of the last voter giving it) or the router's top expert's.

        Each step asks at once the fewest next experts that could still bring agreement (the first two, for
        `agree` 2): asking fewer could not stop the cascade, asking more could pay for answers never needed.
        """
        # Default: cheapest first; equal costs keep the routed order (sorted is stable).
        order = list(cascade.order) if cascade.order else sorted(plan.candidates, key=self.expected_cost.__getitem__)
        order = await self.pool.up_first(self._within_budget(order, cascade.max_cost_usd))
        escalating = cascade.escalate == "router"
        params = capped(params, cascade)
        deadline = time.perf_counter() + cascade.deadline_s
        answers: list[Answer] = []
        named: list[str | None] = []  # what each answer names, as agreement compares it
        called = 0
        while called < len(order) and (left_s := deadline - time.perf_counter()) > 0:
            needed = answers_needed(named, agree)
            if not needed or (escalating and called + needed > len(order)):  # agreed, or it is out of reach
                break
            step = order[called : called + needed]
            called += len(step)
            fresh = await self.pool.fan_out(self.calls, step, plan.messages, params, left_s)
            answers += fresh
            named += [read_answer(a.text, cascade.answers, cascade.options) for a in fresh]
        recruited = order[:called]
        if escalating:
            return replace(plan, recruited=recruited, answer=agreed(answers, named, agree, plan.candidates[0]))
        if not answers:  # nobody answered in time: they are tried one by one, cheapest first
            return replace(plan, candidates=order + [c for c in plan.candidates if c not in order], recruited=recruited)
        return replace(plan, recruited=recruited, answer=pick(answers, cascade))

    async def _ask_recruited(
        self, fan_out: SynthesisConfig | VoteConfig, plan: Plan, params: Mapping[str, Any]
    ) -> tuple[list[str], list[Answer]]:
        """Who was recruited, and the answers of the router's recruited set (or its top k), in routed order and within
        the budget; none when fewer than two are recruited (one expert answers the question itself) or none answered
        in time (the top expert then does)."""
        pool = set(plan.recruited) if len(plan.recruited) > 1 else set(plan.candidates)
        recruited = [name for name in plan.candidates if name in pool][: fan_out.k]
        recruited = self._within_budget(recruited, fan_out.max_cost_usd)
        if len(recruited) < 2:
            return plan.recruited, []
        return recruited, await self.pool.fan_out(self.calls, recruited, plan.messages, params, fan_out.deadline_s)

    def _within_budget(self, names: list[str], max_cost_usd: float | None) -> list[str]:
        """`names` in order, each kept if the expected cost of those kept stays within the budget (the first always
        is: someone must answer)."""
        if max_cost_usd is None:
            return names
        kept: list[str] = []
        spent = 0.0
        for name in names:
            if not kept or spent + self.expected_cost[name] <= max_cost_usd:
                kept.append(name)
                spent += self.expected_cost[name]
        return kept


def pick(answers: list[Answer], vote: VoteConfig | CascadeConfig) -> Answer:
    """The heaviest answer naming the weighted-majority choice (the first when none names one)."""
    weights = expert_weights([a.expert for a in answers], vote.accuracy, vote.options)
    return answers[pick_answer([a.text for a in answers], weights, vote.options, vote.answers)]


def agreed(answers: list[Answer], named: list[str | None], agree: int, top: str) -> Answer | None:
    """The answer of an escalating cascade when it has one in hand: the last voter's answer naming what `agree`
    of them named (voters go cheapest first: the dearest one's words), else the router's top expert's own answer
    if it was one of the voters; None when that expert must still be asked (the plan's first candidate)."""
    for answer, name in zip(reversed(answers), reversed(named), strict=True):
        if name is not None and named.count(name) >= agree:
            return answer
    return next((answer for answer in answers if answer.expert == top), None)


def capped(params: Mapping[str, Any], combine: VoteConfig | CascadeConfig) -> dict[str, Any]:
    """The upstream parameters with each answer cut at the virtual model's `answer_max_tokens`."""
    params = dict(params)
    if combine.answer_max_tokens is not None:
        params["max_tokens"] = min(params.get("max_tokens", combine.answer_max_tokens), combine.answer_max_tokens)
    return params
