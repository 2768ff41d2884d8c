"""gateway/decisions/log.py without a database server: a record's JSON form, and spilled records replayed
into SQLite (a file in a temporary folder) once the database can take them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from experts.pool import ExpertCall
from gateway.decisions.log import DecisionLog, make_engine
from gateway.decisions.record import DecisionRecord
from gateway.migrate import upgrade
from migrations.schema import DeadLetterRow, DecisionRow

_Row = TypeVar("_Row", DecisionRow, DeadLetterRow)

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


def _by_id(url: str, table: type[_Row]) -> dict[str, _Row]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {row.id: row for row in session.scalars(select(table))}
    finally:
        engine.dispose()


def rows(url: str) -> dict[str, DecisionRow]:
    return _by_id(url, DecisionRow)


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


def dead_letters(url: str) -> dict[str, DeadLetterRow]:
    return _by_id(url, DeadLetterRow)


async def drain(url: str, spill: Path, *records: DecisionRecord, **options: object) -> DecisionLog:
    log = DecisionLog(make_engine(url), spill, flush_interval_s=0.01, **options)  # type: ignore[arg-type]
    for record in records:
        log.record(record)
    await log.start()
    await log.stop()
    return log


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_are_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    caplog.set_level(logging.INFO, logger="gateway.decisions.log")
    refused = full_record(id="refused", requested_model=None, calls=[])  # NOT NULL in the schema
    records = [full_record(id=f"r{i}", calls=[]) for i in range(4)]
    log = await drain(url, tmp_path / "spill", records[0], records[1], refused, records[2], records[3])
    assert set(rows(url)) == {"r0", "r1", "r2", "r3"} and log.written == 5 and log.db_ok
    [letter] = dead_letters(url).values()
    assert (letter.id, letter.record, log.dead_letters) == ("refused", refused.to_json(), 1)
    assert letter.error.startswith("IntegrityError: ") and "requested_model" in letter.error
    assert log.spilled_files() == []
    assert f"decision log: record refused refused by the database, set aside: {letter.error}" in caplog.messages
    assert not [r for r in caplog.records if "flush failed" in r.getMessage()]  # the writer itself never failed


@pytest.mark.parametrize("order", [("refused", "ok"), ("ok", "refused"), ("ok", "refused", "ok2")])
async def test_any_small_batch_with_a_refused_record_drains(tmp_path: Path, order: tuple[str, ...]) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    batch = [full_record(id=name, calls=[], **({"requested_model": None} if name == "refused" else {}))
             for name in order]
    await asyncio.wait_for(drain(url, tmp_path / "spill", *batch), timeout=30)
    assert set(rows(url)) == set(order) - {"refused"} and set(dead_letters(url)) == {"refused"}


async def test_every_refused_record_is_counted_and_one_that_cannot_be_set_aside_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    first, second = (full_record(id=f"refused{i}", requested_model=None, calls=[]) for i in (1, 2))
    log = await drain(url, tmp_path / "spill", first, full_record(id="ok", calls=[]), second)
    assert log.dead_letters == 2 and set(dead_letters(url)) == {"refused1", "refused2"}
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE decision_dead_letters")
    engine.dispose()
    caplog.set_level(logging.INFO, logger="gateway.decisions.log")
    third = full_record(id="refused3", requested_model=None, calls=[])
    log = await drain(url, tmp_path / "spill", third, full_record(id="ok2", calls=[]))
    assert "ok2" in rows(url) and log.dead_letters == 1 and log.db_ok  # the database answers: not an outage
    [message] = [m for m in caplog.messages if "could not be set aside" in m]
    assert message.startswith("decision log: record refused3 refused and could not be set aside (")
    assert "decision_dead_letters" in message and message.endswith(f"): {third.to_json()}")


async def test_a_spilled_line_that_is_no_record_is_set_aside_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    spill = tmp_path / "deep" / "spill"  # created, parents and all, when first needed
    writer = DecisionLog(make_engine(url), spill)
    caplog.set_level(logging.INFO, logger="gateway.decisions.log")
    writer._spill([full_record(id="a"), full_record(id="b")])
    [path] = writer.spilled_files()
    assert f"decision log: spilled 2 records to {path}" in caplog.messages
    garbage = '{"not": "a record"}'
    good = path.read_text().splitlines()
    path.write_text("\n".join([good[0], "", garbage, "   ", good[1]]) + "\n")
    writer._spill([full_record(id="c", calls=[])])
    log = await drain(url, spill)
    assert set(rows(url)) == {"a", "b", "c"} and log.written == 3 and log.spilled_files() == []
    assert f"decision log: replayed 2 spilled records from {path.name}" in caplog.messages
    [letter] = dead_letters(url).values()
    assert letter.id == hashlib.sha256(garbage.encode()).hexdigest() and letter.record == garbage
    assert letter.error.startswith(("TypeError: ", "KeyError: "))
    # The same file replayed again (a crash before it was deleted): nothing doubles.
    path.write_text(garbage + "\n" + good[0] + "\n")
    await drain(url, spill)
    assert len(dead_letters(url)) == 1 and set(rows(url)) == {"a", "b", "c"}


async def test_a_buffer_at_its_bound_does_not_spill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"  # not migrated: the database refuses every write
    log = DecisionLog(make_engine(url), tmp_path / "spill", max_buffer=2, flush_interval_s=0.01)
    log.record(full_record(id="r0", calls=[]))
    log.record(full_record(id="r1", calls=[]))
    await log.start()
    await asyncio.sleep(0.2)
    assert log.pending == 2 and log.spilled_files() == [] and not log.db_ok
    log.record(full_record(id="r2", calls=[]))
    for _ in range(200):
        if log.spilled_files():
            break
        await asyncio.sleep(0.01)
    [spilled] = log.spilled_files()
    assert [DecisionRecord.from_json(line).id for line in spilled.read_text().splitlines()] == ["r0"]
    await log.stop()


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> object:
    """This process's local time nine hours ahead of UTC."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_spill_files_and_dead_letters_are_stamped_in_utc(tmp_path: Path, far_from_utc: object) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    before = datetime.now(UTC)
    log = DecisionLog(make_engine(url), tmp_path / "spill")
    log._spill([full_record(id="refused", requested_model=None, calls=[])])
    [path] = log.spilled_files()
    stamped = datetime.strptime(path.name.split("-")[0], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    assert abs(stamped - before) < timedelta(minutes=1)  # file names sort by UTC time across processes
    await drain(url, tmp_path / "spill")
    [letter] = dead_letters(url).values()
    failed_at = letter.failed_at if letter.failed_at.tzinfo else letter.failed_at.replace(tzinfo=UTC)
    assert abs(failed_at - before) < timedelta(minutes=1)


def test_a_set_aside_error_text_holds_no_nul_and_is_cut_at_4000_characters(tmp_path: Path) -> None:
    """A driver's message may quote the value at fault, a NUL included, which no PostgreSQL text column holds."""
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    upgrade(url)
    log = DecisionLog(make_engine(url), tmp_path / "spill")
    log._set_aside("quoted", "{}", ValueError("value a\x00b refused " + "x" * 5000))
    error = dead_letters(url)["quoted"].error
    assert error.startswith("ValueError: value a\\x00b refused xxx") and len(error) == 4000
    assert log.dead_letters == 1
