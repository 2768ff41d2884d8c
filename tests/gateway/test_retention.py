"""`moe db prune --older-than`: retention of the decision log on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.migrate import upgrade
from migrations.retention import parse_age
from migrations.schema import DeadLetterRow, DecisionRow, ExpertCallRow, FeedbackRow


def _decision(decision_id: str, created_at: datetime) -> DecisionRow:
    return DecisionRow(id=decision_id, created_at=created_at, requested_model="moe-auto", request_hash="h" * 64,
                       status="ok", http_status=200, ranked=[], recruited=[], stream=False, explored=False,
                       calls=[ExpertCallRow(attempt=0, expert="stem", started_at=created_at, status="ok")])


def test_prune_removes_old_decisions_with_their_calls_and_feedback_and_keeps_the_rest(database_url: str) -> None:
    upgrade(database_url)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        session.add_all([_decision(f"old-{i}", old) for i in range(7)] + [_decision("recent", recent)])
        session.add_all([FeedbackRow(decision_id=d, source="user", score=1.0, created_at=now, updated_at=now)
                         for d in ("old-0", "recent")])
        session.add_all([DeadLetterRow(id="dead-old", failed_at=old, error="e", record="{}"),
                         DeadLetterRow(id="dead-new", failed_at=recent, error="e", record="{}")])
    result = CliRunner().invoke(cli, ["db", "prune", "--older-than", "30d"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "removed 7 decisions, 7 expert calls, 1 feedback and 1 dead letters" in result.output
    with Session(engine) as session:
        assert list(session.scalars(select(DecisionRow.id))) == ["recent"]
        assert session.scalar(select(func.count()).select_from(ExpertCallRow)) == 1
        assert list(session.scalars(select(FeedbackRow.decision_id))) == ["recent"]
        assert list(session.scalars(select(DeadLetterRow.id))) == ["dead-new"]
    engine.dispose()


@pytest.mark.parametrize("text, expected", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                            (" 90m ", timedelta(minutes=90))])
def test_ages_read_as_days_hours_or_minutes(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "0d", "-1d", "1w", "1.5d", "d"])
def test_other_ages_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="an age such as"):
        parse_age(text)
