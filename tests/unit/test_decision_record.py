"""gateway/decision_log.py without a database server: a record's JSON form, and spilled records replayed
into SQLite (a file in a temporary folder) once the database can take them."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.decision_log import DecisionLog, DecisionRecord, ExpertCall, make_engine
from gateway.migrate import upgrade
from migrations.schema import DecisionRow


def full_record(**overrides: object) -> DecisionRecord:
    started = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    fields: dict[str, object] = dict(
        requested_model="moe-auto:0.3", request_hash="ab" * 32, stream=True,
        created_at=datetime(2026, 3, 1, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        virtual_model="moe-auto", policy="0.3", router="embedding-domain", router_version="v1",
        ranked=[{"expert": "stem", "score": 0.8}, {"expert": "general", "score": 0.1}], recruited=["stem"],
        chosen_expert="general", confidence=0.8, routing_ms=1.5, upstream_ms=120.0, ttft_ms=30.0,
        prompt_tokens=12, completion_tokens=34, cost_usd=1.25e-05, cache_hit=False, status="ok", http_status=200,
        error=None, prompt="What is 2 + 2?", api_key_id=3, tenant="acme",
        calls=[ExpertCall(1, "stem", started, "upstream_5xx", 10.0, None, "upstream exploded"),
               ExpertCall(2, "general", started + timedelta(seconds=1), "ok", 110.0, 30.0, None, 12, 34)],
    )
    fields.update(overrides)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def test_a_record_survives_its_json_form_unchanged() -> None:
    record = full_record()
    line = record.to_json()
    assert "\n" not in line  # one record per line of a spill file or journal
    assert DecisionRecord.from_json(line) == record
    raw = json.loads(line)
    assert raw["created_at"] == "2026-03-01T12:00:01+02:00"  # the offset is kept, not dropped
    assert raw["calls"][0]["started_at"] == "2026-03-01T12:00:00.123456+00:00"
    assert DecisionRecord.from_json(DecisionRecord("m", "h", False).to_json()).calls == []


def test_only_datetimes_get_a_json_form_of_their_own() -> None:
    with pytest.raises(TypeError, match="cannot serialise bytes"):
        full_record(prompt=b"raw bytes").to_json()


def rows(url: str) -> dict[str, DecisionRow]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {row.id: row for row in session.scalars(select(DecisionRow))}
    finally:
        engine.dispose()


async def test_records_spilled_while_the_database_cannot_take_them_are_replayed_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    spill = tmp_path / "spill"
    records = [full_record(), full_record(id="second", calls=[]), full_record(id="third", stream=False)]

    # No tables yet (not migrated): every write fails, so stopping spills what is buffered.
    down = DecisionLog(make_engine(url), spill, flush_interval_s=0.01)
    await down.start()
    for record in records:
        down.record(record)
    assert down.pending == 3
    await down.stop()
    assert len(down.spilled_files()) == 1 and not down.db_ok and down.written == 0
    spilled = [DecisionRecord.from_json(line) for line in down.spilled_files()[0].read_text().splitlines()]
    assert spilled == records

    upgrade(url)
    up = DecisionLog(make_engine(url), spill, flush_interval_s=0.01)
    await up.start()
    await up.stop()
    assert up.spilled_files() == [] and up.written == 3 and up.db_ok
    stored = rows(url)
    assert set(stored) == {r.id for r in records}
    first = stored[records[0].id]
    assert (first.chosen_expert, first.cost_usd, first.ranked, first.tenant) == ("general", 1.25e-05,
                                                                                 records[0].ranked, "acme")
    assert [(c.attempt, c.expert, c.status) for c in sorted(first.calls, key=lambda c: c.attempt)] == [
        (1, "stem", "upstream_5xx"), (2, "general", "ok")]

    # A spill file replayed again (a crash between the write and the delete) duplicates nothing.
    again = DecisionLog(make_engine(url), spill, flush_interval_s=0.01)
    again._spill(records)
    await again.start()
    await again.stop()
    assert again.spilled_files() == [] and len(rows(url)) == 3


async def test_past_its_bound_the_buffer_spills_its_oldest_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"  # not migrated: the database refuses every write
    log = DecisionLog(make_engine(url), tmp_path / "spill", max_buffer=2, flush_interval_s=0.01)
    records = [full_record(id=f"r{i}", calls=[]) for i in range(5)]
    for record in records:
        log.record(record)
    await log.start()
    for _ in range(200):
        if log.spilled_files():
            break
        await asyncio.sleep(0.01)
    assert log.pending == 2
    [spilled] = log.spilled_files()
    assert [DecisionRecord.from_json(line).id for line in spilled.read_text().splitlines()] == ["r0", "r1", "r2"]
    await log.stop()
