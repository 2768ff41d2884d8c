"""The decision log as training reads it: the routed decisions of a time window that received feedback, each with
its mean feedback score, oldest first. Read-only; SQLite or PostgreSQL.

A decision is in the window by its own `created_at` (since <= created_at < until), not by its feedback's: a window
holds the traffic one router version served. The query walks `ix_decisions_created_at`, and the feedback is grouped
by `ix_feedback_decision_id`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, func, select

from migrations.schema import DecisionRow, FeedbackRow


@dataclass(frozen=True)
class LoggedDecision:
    id: str
    created_at: datetime
    virtual_model: str | None
    router_version: str | None
    policy: str | None  # the cost knob the request asked for
    prompt: str | None  # the request's messages as JSON text; None when prompt storage was off
    chosen_expert: str
    ranked: list[str]  # the serving router's ranking, best first (before exploration)
    propensity: float  # the probability the serving policy put `chosen_expert` first
    explored: bool
    tokens: int | None  # prompt + completion tokens of the answer; None when the expert did not say
    reward: float  # the mean of the chosen sources' feedback scores, 0 (bad) to 1 (good)
    feedback: int  # how many sources' scores that mean is of


def _window(
    columns: Sequence[Any],
    since: datetime | None,
    until: datetime | None,
    virtual_models: Sequence[str] | None,
    sources: Sequence[str] | None,
) -> Select[Any]:
    feedback = select(FeedbackRow.decision_id, func.avg(FeedbackRow.score).label("reward"),
                      func.count().label("feedback"))
    if sources:
        feedback = feedback.where(FeedbackRow.source.in_(sources))
    scores = feedback.group_by(FeedbackRow.decision_id).subquery()
    query = (
        select(*columns, scores.c.reward, scores.c.feedback)
        .join(scores, scores.c.decision_id == DecisionRow.id)
        .where(DecisionRow.http_status == 200, DecisionRow.chosen_expert.is_not(None), DecisionRow.propensity > 0)
    )
    if since is not None:
        query = query.where(DecisionRow.created_at >= since)
    if until is not None:
        query = query.where(DecisionRow.created_at < until)
    if virtual_models is not None:
        query = query.where(DecisionRow.virtual_model.in_(virtual_models))
    return query


def count_window(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    virtual_models: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> int:
    """How many decisions `read_window` yields for the same arguments."""
    inner = _window([DecisionRow.id], since, until, virtual_models, sources).subquery()
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


def read_window(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    virtual_models: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    batch: int = 1_000,
) -> Iterator[LoggedDecision]:
    """Answered decisions (HTTP 200) with a chosen expert, a propensity and feedback from `sources` (all sources
    when None), made by `virtual_models` (all when None) in [since, until), oldest first; streamed in batches."""
    columns = [DecisionRow.id, DecisionRow.created_at, DecisionRow.virtual_model, DecisionRow.router_version,
               DecisionRow.policy, DecisionRow.prompt, DecisionRow.chosen_expert, DecisionRow.ranked,
               DecisionRow.propensity, DecisionRow.explored, DecisionRow.prompt_tokens, DecisionRow.completion_tokens]
    query = _window(columns, since, until, virtual_models, sources).order_by(DecisionRow.created_at, DecisionRow.id)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=batch).execute(query):
            tokens = None if row.prompt_tokens is None or row.completion_tokens is None \
                else row.prompt_tokens + row.completion_tokens
            yield LoggedDecision(
                id=row.id, created_at=row.created_at, virtual_model=row.virtual_model,
                router_version=row.router_version, policy=row.policy, prompt=row.prompt,
                chosen_expert=row.chosen_expert, ranked=[entry["expert"] for entry in row.ranked or []],
                propensity=float(row.propensity), explored=bool(row.explored), tokens=tokens,
                reward=float(row.reward), feedback=int(row.feedback),
            )
