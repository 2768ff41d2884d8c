"""Retention: the decision log's rows older than a cutoff removed, in batches (each its own short transaction, so
a gateway writing beside it never waits long), with their expert calls and feedback. Router versions and API keys
are kept."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select

from migrations.schema import DeadLetterRow, DecisionRow, ExpertCallRow, FeedbackRow

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
