"""Retention: the decision log's rows older than a cutoff removed, with their expert calls and feedback; the text
of decisions (prompt and answer) cleared past their virtual model's own retention, the rest of the row kept; and
stored responses (`POST /v1/responses`) older than theirs removed. All in batches, each its own short transaction, so
a gateway writing beside them never waits long. Router versions and API keys are kept."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update

from migrations.schema import DeadLetterRow, DecisionRow, ExpertCallRow, FeedbackRow, ResponseRow

_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h` or `90m`."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"an age such as 30d, 12h or 90m, not {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@dataclass(frozen=True)
class Pruned:
    decisions: int
    expert_calls: int
    feedback: int
    dead_letters: int


def prune(engine: Engine, before: datetime, batch: int = 5_000) -> Pruned:
    decisions = calls = feedback = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.scalars(select(DecisionRow.id).where(DecisionRow.created_at < before).limit(batch)))
            if not ids:
                break
            # Explicit, not ON DELETE CASCADE: SQLite enforces foreign keys only when asked per connection.
            calls += conn.execute(delete(ExpertCallRow).where(ExpertCallRow.decision_id.in_(ids))).rowcount
            feedback += conn.execute(delete(FeedbackRow).where(FeedbackRow.decision_id.in_(ids))).rowcount
            decisions += conn.execute(delete(DecisionRow).where(DecisionRow.id.in_(ids))).rowcount
    with engine.begin() as conn:
        dead = conn.execute(delete(DeadLetterRow).where(DeadLetterRow.failed_at < before)).rowcount
    return Pruned(decisions, calls, feedback, dead)


def clear_text(engine: Engine, retention: Mapping[str, datetime], batch: int = 5_000) -> int:
    """Clear the prompt and answer of each virtual model's decisions made before its cutoff (`retention`: virtual
    model -> cutoff); how many decisions lost their text. Found by `ix_decisions_text_kept`, which holds only the
    decisions that still have text."""
    cleared = 0
    for virtual_model, before in retention.items():
        while True:
            with engine.begin() as conn:
                ids = list(
                    conn.scalars(
                        select(DecisionRow.id)
                        .where(
                            DecisionRow.virtual_model == virtual_model,
                            DecisionRow.created_at < before,
                            DecisionRow.prompt.is_not(None),
                        )
                        .limit(batch)
                    )
                )
                if not ids:
                    break
                cleared += conn.execute(
                    update(DecisionRow).where(DecisionRow.id.in_(ids)).values(prompt=None, answer=None)
                ).rowcount
    return cleared


def prune_responses(engine: Engine, before: datetime, batch: int = 5_000) -> int:
    """Remove the stored responses made before `before` (found by `ix_responses_created_at`); how many."""
    removed = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.scalars(select(ResponseRow.id).where(ResponseRow.created_at < before).limit(batch)))
            if not ids:
                return removed
            removed += conn.execute(delete(ResponseRow).where(ResponseRow.id.in_(ids))).rowcount
