"""Writes decision records off the request path, in batches, without ever losing one.

A request only appends to an in-memory buffer. A background task writes batches in a worker
thread; when the database is down the batch stays buffered and is retried with backoff. Past the
buffer's bound, the oldest records spill to JSON-lines files on disk, which are replayed (and
deleted) once the database answers again. Rows already present are skipped, so a replay after a
crash between write and delete duplicates nothing. Shutdown flushes; if the database is still down
then, everything left spills.

PostgreSQL takes each batch by COPY: 11-12k records/s against 6-7k for the executemany insert it
replaced, at half the writer's CPU per record (26 us against 57, with one expert call each, on 2
cores; bench/log_scale.py measures it at 1M records). COPY cannot skip a row already present, so a
batch that holds one (a replay) goes again through the insert that ignores them, as on SQLite.

One record must never hold up the others. Strings are cut to their columns' lengths before they are
written. A batch the database refuses while it still answers a ping was refused for its data: it is
split in halves until the record at fault is alone, and that record goes to the dead-letter table
with the error, while the rest are written. Spilled files replay the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, String, Table, create_engine, text

from gateway.decisions.record import DecisionRecord
from migrations.schema import DeadLetterRow, DecisionRow, ExpertCallRow

log = logging.getLogger(__name__)

BATCH = 500
MAX_BACKOFF_S = 5.0
RECENT = 100_000  # decisions whose owner is kept in memory, for feedback that arrives before the row is written
PING_INTERVAL_S = 2.0  # how often an idle log checks that the database still answers (for /readyz)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
    return create_engine(url, pool_pre_ping=True, pool_size=2, connect_args={"connect_timeout": 3})


class DatabaseDown(Exception):
    """The database does not answer: keep every record and retry later."""


@dataclass(frozen=True)
class LogStatus:
    """What /readyz and /metrics say of the log: whether it drains, apart from whether the database answers."""

    pending: int  # records in memory, not yet written
    spilled_files: int
    backlog_age_s: float  # age of the oldest record not yet written (memory or disk); 0 when none waits
    dead_letters: int  # records this process set aside since it started
    database_reachable: bool
    writing: bool  # the writer task runs

    @property
    def draining(self) -> bool:
        return self.writing and self.database_reachable

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "draining": self.draining}


class DecisionLog:
    def __init__(
        self, engine: Engine, spill_dir: Path, *, max_buffer: int = 10_000, flush_interval_s: float = 0.25
    ) -> None:
        self.engine = engine
        self.spill_dir = spill_dir
        self.max_buffer = max_buffer
        self.flush_interval_s = flush_interval_s
        self._buffer: deque[DecisionRecord] = deque()
        # Oldest first. An OrderedDict drops its oldest in O(1); a dict's first key, found past the slots of the keys
        # deleted before it, took up to 30 us a record once full (20 times the rest of `record`).
        self._recent: OrderedDict[str, tuple[int | None, str | None]] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_contact = 0.0  # monotonic time the database last answered
        self.db_ok = True
        self.written = 0
        self.dead_letters = 0

    # -- request side -----------------------------------------------------------------------
    def record(self, rec: DecisionRecord) -> None:
        """Never blocks and never fails: the request path only appends."""
        self._buffer.append(rec)
        self._recent[rec.id] = (rec.api_key_id, rec.tenant)
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        if len(self._buffer) >= BATCH:
            self._wake.set()

    def recent_owner(self, decision_id: str) -> tuple[int | None, str | None] | None:
        """(api key id, tenant) of a decision this process recorded lately, whether or not it is written yet."""
        return self._recent.get(decision_id)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def status(self) -> LogStatus:
        spilled = self.spilled_files()
        oldest = [self._buffer[0].created_at] if self._buffer else []
        oldest += [when for path in spilled[:1] if (when := _written_at(path)) is not None]
        age = (datetime.now(UTC) - min(oldest)).total_seconds() if oldest else 0.0
        return LogStatus(
            pending=len(self._buffer),
            spilled_files=len(spilled),
            backlog_age_s=round(max(0.0, age), 3),
            dead_letters=self.dead_letters,
            database_reachable=self.db_ok,
            writing=self._task is not None and not self._task.done(),
        )

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    async def stop(self) -> None:
        """Flush what is buffered; spill the rest if the database cannot take it."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        if self._buffer:
            await asyncio.to_thread(self._spill, list(self._buffer))
            self._buffer.clear()
        self.engine.dispose()

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            ok = await self._flush_once()
            if self._stopping and (not ok or not self._buffer):
                return
            backoff = self.flush_interval_s if ok else min(MAX_BACKOFF_S, backoff * 2)

    async def _flush_once(self) -> bool:
        """Write everything buffered and any spilled files; False when the database is down."""
        try:
            while self._buffer:
                batch = [self._buffer[i] for i in range(min(BATCH, len(self._buffer)))]
                await asyncio.to_thread(self._write, batch)
                for _ in batch:
                    self._buffer.popleft()
                self.written += len(batch)
            await asyncio.to_thread(self._replay_spilled)
            if time.monotonic() - self._last_contact > PING_INTERVAL_S and not await asyncio.to_thread(self.ping):
                raise DatabaseDown  # idle, but /readyz should still learn that the database went away
        except DatabaseDown as exc:
            if self.db_ok:
                log.warning("decision log: database unavailable, buffering (%s)", exc.__cause__ or "no answer")
            self.db_ok = False
            self._spill_overflow()
            return False
        except Exception:  # a bug here must not end the writer: keep everything, say so, retry
            log.exception("decision log: flush failed, will retry")
            self._spill_overflow()
            return False
        if not self.db_ok:
            log.info("decision log: database back, buffer drained")
        self.db_ok = True
        return True

    # -- database -----------------------------------------------------------------------------
    def _write(self, batch: list[DecisionRecord]) -> None:
        """Write the batch, setting aside any record the database refuses for its data; DatabaseDown when it
        does not answer (nothing is then set aside)."""
        try:
            self._insert(batch)
        except Exception as exc:  # noqa: BLE001 - sorted below: the database down, or a record it refuses
            if not self.ping():
                raise DatabaseDown from exc
            if len(batch) == 1:
                self._set_aside(batch[0].id, batch[0].to_json(), exc)
                return
            half = len(batch) // 2
            self._write(batch[:half])
            self._write(batch[half:])
        self._last_contact = time.monotonic()

    def _insert(self, batch: list[DecisionRecord]) -> None:
        decisions = []
        calls = []
        for rec in batch:
            row = rec.as_row()
            for call in row.pop("calls"):
                calls.append(_bounded(ExpertCallRow.__table__, {**call, "decision_id": rec.id}))
            decisions.append(_bounded(DecisionRow.__table__, row))
        if self.engine.dialect.name == "postgresql":
            from psycopg.errors import UniqueViolation

            try:
                self._copy(decisions, calls)
                return
            except UniqueViolation:  # rows already written: a replay, taken by the insert that skips them
                pass
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignoring(DecisionRow), decisions)
            if calls:
                conn.execute(self._insert_ignoring(ExpertCallRow), calls)

    def _copy(self, decisions: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
        """Both tables' rows by COPY, in one transaction (PostgreSQL, through psycopg's own cursor)."""
        with self.engine.begin() as conn, conn.connection.driver_connection.cursor() as cursor:
            for table, rows in ((DecisionRow.__table__, decisions), (ExpertCallRow.__table__, calls)):
                if not rows:
                    continue
                names = [column for column in _columns(table) if column in rows[0]]
                json_columns = _json_columns(table)
                with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([json.dumps(row[n]) if n in json_columns else row[n] for n in names])

    def _insert_ignoring(self, row: type[Any]) -> Any:
        if self.engine.dialect.name == "postgresql":  # each dialect's module loads only where it is used
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(row).on_conflict_do_nothing()

    def _set_aside(self, key: str, line: str, exc: Exception) -> None:
        """One record the database refused, kept with the error in the dead-letter table."""
        # The driver's message can quote the value at fault, a NUL included, which no text column holds.
        error = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")[:4000]
        row = {"id": key, "failed_at": datetime.now(UTC), "error": error, "record": line}
        try:
            with self.engine.begin() as conn:
                conn.execute(self._insert_ignoring(DeadLetterRow), [row])
        except Exception as again:  # noqa: BLE001 - the database down now, or the dead-letter table missing
            if not self.ping():
                raise DatabaseDown from again
            log.error("decision log: record %s refused and could not be set aside (%s): %s", key, again, line)
        else:
            log.error("decision log: record %s refused by the database, set aside: %s", key, error)
        self.dead_letters += 1

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM decisions WHERE 1 = 0"))
        except Exception:  # noqa: BLE001 - a ping only reports
            return False
        self._last_contact = time.monotonic()
        return True

    # -- disk spill ---------------------------------------------------------------------------
    def _spill_overflow(self) -> None:
        excess = len(self._buffer) - self.max_buffer
        if excess > 0:
            self._spill([self._buffer.popleft() for _ in range(excess)])

    def _spill(self, records: list[DecisionRecord]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = self.spill_dir / (name + ".tmp")
        with tmp.open("w") as fh:
            for rec in records:
                fh.write(rec.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(self.spill_dir / name)
        log.warning("decision log: spilled %d records to %s", len(records), self.spill_dir / name)

    def spilled_files(self) -> list[Path]:
        return sorted(self.spill_dir.glob("*.jsonl")) if self.spill_dir.is_dir() else []

    def _replay_spilled(self) -> None:
        for path in self.spilled_files():
            records = []
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    records.append(DecisionRecord.from_json(line))
                except (ValueError, TypeError, KeyError) as exc:  # a line no record reads back from
                    self._set_aside(hashlib.sha256(line.encode()).hexdigest(), line, exc)
            for start in range(0, len(records), BATCH):
                self._write(records[start : start + BATCH])
            path.unlink()
            self.written += len(records)
            log.info("decision log: replayed %d spilled records from %s", len(records), path.name)


def _bounded(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with each string cut to its column's length: an over-long value must not refuse the whole batch."""
    for name, limit in _string_limits(table):
        value = row.get(name)
        if isinstance(value, str) and len(value) > limit:
            row[name] = value[:limit]
    return row


@functools.cache
def _string_limits(table: Table) -> tuple[tuple[str, int], ...]:
    return tuple(
        (column.name, column.type.length)
        for column in table.columns
        if isinstance(column.type, String) and column.type.length is not None
    )


@functools.cache
def _columns(table: Table) -> tuple[str, ...]:
    return tuple(column.name for column in table.columns)


@functools.cache
def _json_columns(table: Table) -> frozenset[str]:
    """Columns COPY takes as JSON text (ranked, recruited)."""
    return frozenset(column.name for column in table.columns if isinstance(column.type, JSON))


def _written_at(path: Path) -> datetime | None:
    """When a spill file was written (its records are older); None when a replay just removed it."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None
