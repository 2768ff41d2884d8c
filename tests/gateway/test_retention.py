"""`moe db prune`: retention of the decision log (`--older-than`), of the text virtual models keep
(`store_text.retention_days`) and of stored responses (MOE_RESPONSES_RETENTION_DAYS), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.migrate import upgrade
from gateway.settings import Settings
from migrations.retention import parse_age, prune_responses
from migrations.schema import DeadLetterRow, DecisionRow, ExpertCallRow, FeedbackRow, ResponseRow


def _decision(
    decision_id: str, created_at: datetime, virtual_model: str = "moe-auto", text: bool = False
) -> DecisionRow:
    return DecisionRow(
        id=decision_id,
        created_at=created_at,
        requested_model=virtual_model,
        request_hash="h" * 64,
        virtual_model=virtual_model,
        status="ok",
        http_status=200,
        ranked=[],
        recruited=[],
        stream=False,
        explored=False,
        prompt='[{"role": "user", "content": "q"}]' if text else None,
        answer="a" if text else None,
        calls=[ExpertCallRow(attempt=0, expert="stem", started_at=created_at, status="ok")],
    )


def _response(response_id: str, created_at: datetime) -> ResponseRow:
    return ResponseRow(
        id=response_id, created_at=created_at, api_key_id=None, tenant=None, messages="[]", response="{}"
    )


def _config(tmp_path: Path) -> str:
    """`week` keeps text 7 days, `forever` keeps it as long as the row, `none` keeps none."""
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experts": [{"name": "stem", "model": "m", "api_base": "http://127.0.0.1:9/v1"}],
                "routers": [{"name": "r", "artifact": "var/routers/x"}],
                "virtual_models": [
                    {"name": "week", "router": "r", "store_text": {"retention_days": 7}},
                    {"name": "forever", "router": "r", "store_text": {}},
                    {"name": "none", "router": "r"},
                ],
            }
        )
    )
    return str(path)


def test_prune_removes_old_decisions_with_their_calls_and_feedback_and_keeps_the_rest(database_url: str) -> None:
    upgrade(database_url)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        session.add_all([_decision(f"old-{i}", old) for i in range(7)] + [_decision("recent", recent)])
        session.add_all(
            [
                FeedbackRow(decision_id=d, source="user", score=1.0, created_at=now, updated_at=now)
                for d in ("old-0", "recent")
            ]
        )
        session.add_all(
            [
                DeadLetterRow(id="dead-old", failed_at=old, error="e", record="{}"),
                DeadLetterRow(id="dead-new", failed_at=recent, error="e", record="{}"),
            ]
        )
    result = CliRunner().invoke(cli, ["db", "prune", "--older-than", "30d"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "removed 7 decisions, 7 expert calls, 1 feedback and 1 dead letters" in result.output
    with Session(engine) as session:
        assert list(session.scalars(select(DecisionRow.id))) == ["recent"]
        assert session.scalar(select(func.count()).select_from(ExpertCallRow)) == 1
        assert list(session.scalars(select(FeedbackRow.decision_id))) == ["recent"]
        assert list(session.scalars(select(DeadLetterRow.id))) == ["dead-new"]
    engine.dispose()


def test_prune_clears_text_past_each_virtual_models_retention_and_keeps_the_rows(
    database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    now = datetime.now(UTC)
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        session.add_all(
            [_decision(f"week-old-{i}", now - timedelta(days=8), "week", text=True) for i in range(3)]
            + [
                _decision("week-new", now - timedelta(days=6), "week", text=True),
                _decision("forever-old", now - timedelta(days=300), "forever", text=True),
            ]
        )
    env = {"DATABASE_URL": database_url, "MOE_CONFIG": _config(tmp_path)}
    result = CliRunner().invoke(cli, ["db", "prune"], env=env)
    assert result.exit_code == 0, result.output
    assert "cleared the text of 3 decisions past their virtual model's retention (week)" in result.output
    with Session(engine) as session:
        rows = {row.id: row for row in session.scalars(select(DecisionRow))}
        calls = session.scalar(select(func.count()).select_from(ExpertCallRow))
    assert {id_: (row.prompt is not None, row.answer) for id_, row in rows.items()} == {
        "week-old-0": (False, None),
        "week-old-1": (False, None),
        "week-old-2": (False, None),
        "week-new": (True, "a"),
        "forever-old": (True, "a"),
    }
    assert calls == 5  # the rows stay whole but for their text
    again = CliRunner().invoke(cli, ["db", "prune"], env=env)
    assert "cleared the text of 0 decisions" in again.output
    engine.dispose()


def test_every_prune_removes_stored_responses_past_their_retention(database_url: str) -> None:
    upgrade(database_url)
    now = datetime.now(UTC)
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        session.add_all(
            [_response(f"resp_old_{i}", now - timedelta(days=31)) for i in range(3)]
            + [_response("resp_week", now - timedelta(days=8)), _response("resp_new", now)]
        )
    # No --older-than and no virtual model keeping text (the embedded config): stored responses alone.
    result = CliRunner().invoke(cli, ["db", "prune"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "removed 3 stored responses older than 30 days" in result.output
    with Session(engine) as session:
        assert set(session.scalars(select(ResponseRow.id))) == {"resp_week", "resp_new"}
    shorter = CliRunner().invoke(
        cli, ["db", "prune"], env={"DATABASE_URL": database_url, "MOE_RESPONSES_RETENTION_DAYS": "7"}
    )
    assert shorter.exit_code == 0, shorter.output
    assert "removed 1 stored responses older than 7 days" in shorter.output
    with Session(engine) as session:
        assert list(session.scalars(select(ResponseRow.id))) == ["resp_new"]
    engine.dispose()


def test_stored_responses_are_removed_in_batches(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    now = datetime.now(UTC)
    engine = create_engine(sqlite_url)
    with Session(engine) as session, session.begin():
        session.add_all(
            [_response(f"resp_{i}", now - timedelta(days=40)) for i in range(5)] + [_response("resp_new", now)]
        )
    assert prune_responses(engine, now - timedelta(days=30), batch=2) == 5
    with Session(engine) as session:
        assert list(session.scalars(select(ResponseRow.id))) == ["resp_new"]
    engine.dispose()


@pytest.mark.parametrize("days", [0, -1])
def test_a_responses_retention_below_a_day_is_refused(days: int) -> None:
    with pytest.raises(ValidationError, match="moe_responses_retention_days"):
        Settings(moe_responses_retention_days=days)


@pytest.mark.parametrize(
    "text, expected", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), (" 90m ", timedelta(minutes=90))]
)
def test_ages_read_as_days_hours_or_minutes(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "0d", "-1d", "1w", "1.5d", "d"])
def test_other_ages_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="an age such as"):
        parse_age(text)
