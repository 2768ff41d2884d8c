"""Batch state in the `batches` table: created by the API, moved along by the process running it (gateway/batch/
jobs.py), cancelled by the API. Every change of status is one conditional UPDATE, so that a cancel and the runner's
own steps never overwrite each other, on SQLite as on PostgreSQL. Blocking: the gateway calls it from worker threads.

Who runs a batch: the process named in `runner`, while it renews `heartbeat_at`. A batch whose runner let go (a
gateway stopping releases its batches) or stopped renewing for `lease_s` (it died) is taken by the next process that
looks, which resumes it from its journal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, or_, select, update
from sqlalchemy.orm import Session

from gateway.batch.files import Tenant, owned, page
from gateway.batch.protocol import UNFINISHED
from migrations.schema import BatchRow, FileRow

COMPLETION_WINDOW = timedelta(hours=24)
CANCELLABLE = ("validating", "in_progress")


def _now() -> datetime:
    return datetime.now(UTC)


class BatchStore:
    def __init__(self, engine: Engine, lease_s: float) -> None:
        self.engine = engine
        self.lease_s = lease_s

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- the API's side -------------------------------------------------------------------------
    def create(self, row: BatchRow) -> BatchRow:
        row.created_at = _now()
        row.expires_at = row.created_at + COMPLETION_WINDOW
        row.heartbeat_at = row.created_at
        with self._session() as session, session.begin():
            session.add(row)
        return row

    def get(self, batch_id: str, tenant: Tenant) -> BatchRow | None:
        with self._session() as session:
            return session.scalars(select(BatchRow).where(BatchRow.id == batch_id, owned(BatchRow, tenant))).first()

    def list(self, tenant: Tenant, *, after: str | None, limit: int) -> tuple[list[BatchRow], bool]:
        with self._session() as session:
            return page(session, BatchRow, [owned(BatchRow, tenant)], after=after, limit=limit)

    def cancel(self, batch_id: str, tenant: Tenant) -> BatchRow | None:
        """Ask the runner to stop: `cancelling` until it has finished what was in flight. None: no such batch."""
        with self._session() as session, session.begin():
            session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, owned(BatchRow, tenant), BatchRow.status.in_(CANCELLABLE))
                .values(status="cancelling", cancelling_at=_now())
            )
        return self.get(batch_id, tenant)

    # -- the runner's side ----------------------------------------------------------------------
    def _stale(self) -> ColumnElement[bool]:
        return or_(BatchRow.runner.is_(None), BatchRow.heartbeat_at < _now() - timedelta(seconds=self.lease_s))

    def orphans(self) -> list[str]:
        """Unfinished batches nobody runs."""
        with self._session() as session:
            return list(session.scalars(select(BatchRow.id).where(BatchRow.status.in_(UNFINISHED), self._stale())))

    def claim(self, batch_id: str, runner: str) -> bool:
        with self._session() as session, session.begin():
            return bool(
                session.execute(
                    update(BatchRow)
                    .where(BatchRow.id == batch_id, BatchRow.status.in_(UNFINISHED), self._stale())
                    .values(runner=runner, heartbeat_at=_now())
                ).rowcount
            )

    def release(self, runner: str) -> None:
        """Let go of every batch `runner` holds (the gateway stops): the next process to look resumes them."""
        with self._session() as session, session.begin():
            session.execute(update(BatchRow).where(BatchRow.runner == runner).values(runner=None))

    def load(self, batch_id: str) -> BatchRow:
        with self._session() as session:
            row = session.get(BatchRow, batch_id)
        assert row is not None  # batches are never deleted
        return row

    def beat(self, batch_id: str, runner: str, **counts: int) -> str | None:
        """Renew the claim and publish the request counts; the batch's status, None when another runner took it."""
        with self._session() as session, session.begin():
            held = session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.runner == runner)
                .values(heartbeat_at=_now(), **counts)
            ).rowcount
            return session.scalar(select(BatchRow.status).where(BatchRow.id == batch_id)) if held else None

    def advance(self, batch_id: str, runner: str, status: str, **values: Any) -> str | None:
        """Move the batch from the status before `status` (validating -> in_progress -> finalizing) unless a cancel
        came first; the status it has then, None when another runner took it."""
        before = {"in_progress": "validating", "finalizing": "in_progress"}[status]
        with self._session() as session, session.begin():
            session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.runner == runner, BatchRow.status == before)
                .values(status=status, **{f"{status}_at": _now()}, **values)
            )
            row = session.scalars(select(BatchRow).where(BatchRow.id == batch_id, BatchRow.runner == runner)).first()
            return row.status if row else None

    def finish(self, batch_id: str, runner: str, files: list[FileRow], **values: Any) -> bool:
        """The batch's end (completed, cancelled or failed, with its output and error files) in one commit."""
        ending = {"completed": "completed_at", "cancelled": "cancelled_at", "failed": "failed_at"}[values["status"]]
        with self._session() as session, session.begin():
            done = session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.runner == runner)
                .values(runner=None, **{ending: _now()}, **values)
            ).rowcount
            if done:
                for file in files:
                    session.merge(file)  # a finish interrupted before its commit wrote the same ids
        return bool(done)
