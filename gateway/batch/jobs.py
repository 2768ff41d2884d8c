"""The gateway runs its Batch API batches itself, in the background, on the app's own services (routers, expert pool,
decision log, key spend) and on `moe batch run`'s engine (gateway/batch/runner.py): every request routed first, then
sent expert by expert, each answer journaled before it counts, one decision record per request.

A batch: validating (its input read and parsed) -> in_progress -> finalizing (its output and error files written)
-> completed. A cancel (`cancelling`) stops sending; what was in flight finishes, and the batch ends `cancelled` with
the answers it has, its unsent requests listed in the error file as `batch_cancelled`. A batch that cannot run (its
input deleted, an internal error) ends `failed`.

A stopping gateway cancels its running batches and lets go of them; the next gateway to start (or another replica,
within LEASE_S of a crash) resumes each from its journal, kept beside the files: answered requests are not sent
again, their records not written twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

from rich.progress import Progress
from sqlalchemy.exc import SQLAlchemyError

from gateway.batch.batches import BatchStore
from gateway.batch.files import FileStore
from gateway.batch.journal import Journal, error_line, succeeded
from gateway.batch.runner import CONCURRENCY, BatchService, Input, answer, outputs, read_input
from gateway.services import Services
from migrations.schema import BatchRow

log = logging.getLogger(__name__)

LEASE_S = 30.0  # a runner silent this long is taken for dead and its batches resumed elsewhere
BEAT_S = 0.5  # how often a running batch publishes its counts, renews its claim and looks for a cancel
SCAN_S = LEASE_S / 2  # how often a gateway looks for batches nobody runs


class LostClaim(Exception):
    """Another runner holds the batch now (this one was taken for dead): leave it to that one."""


class BatchJobs:
    def __init__(
        self, services: Services, files: FileStore, batches: BatchStore, *, concurrency: int = CONCURRENCY
    ) -> None:
        self.services = services
        self.files = files
        self.batches = batches
        self.concurrency = concurrency
        self.runner = uuid.uuid4().hex  # this process, as the batches it claims name it
        self._running: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._scanner = asyncio.create_task(self._scan_periodically(), name="batch-scanner")

    async def stop(self) -> None:
        tasks = [t for t in (self._scanner, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.batches.release, self.runner)
        except SQLAlchemyError as exc:  # they are taken over once their claims go stale
            log.warning("batches: could not let go of running batches (%s)", type(exc).__name__)

    def run(self, batch_id: str) -> None:
        """Start running a batch this process has claimed (created with its runner)."""
        task = asyncio.create_task(self._run(batch_id), name=f"batch-{batch_id}")
        self._running[batch_id] = task
        task.add_done_callback(lambda _: self._running.pop(batch_id, None))

    async def _scan_periodically(self) -> None:
        while True:
            try:
                for batch_id in await asyncio.to_thread(self.batches.orphans):
                    if batch_id not in self._running and await asyncio.to_thread(
                        self.batches.claim, batch_id, self.runner
                    ):
                        log.info("batch %s: resumed", batch_id)
                        self.run(batch_id)
            except SQLAlchemyError as exc:
                log.warning("batches: cannot look for batches to resume (%s); will retry", type(exc).__name__)
            await asyncio.sleep(SCAN_S)

    async def _run(self, batch_id: str) -> None:
        try:
            await self._answer(batch_id)
        except LostClaim:
            log.warning("batch %s: taken over by another gateway process", batch_id)
        except SQLAlchemyError as exc:  # still claimed, no longer renewed: resumed once the claim goes stale
            log.warning("batch %s: database unavailable (%s); it resumes later", batch_id, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - the batch fails, saying why; the gateway goes on
            log.exception("batch %s failed", batch_id)
            await self._fail(
                batch_id, "internal_error", f"The batch stopped on an internal error ({type(exc).__name__})."
            )

    def _journal(self, batch_id: str) -> Path:
        return self.files.root / "batches" / f"{batch_id}.partial"

    async def _answer(self, batch_id: str) -> None:
        row = await asyncio.to_thread(self.batches.load, batch_id)
        data = await asyncio.to_thread(self.files.read, row.input_file_id)
        if data is None:
            await self._fail(batch_id, "input_file_not_found", f"The input file {row.input_file_id} was deleted.")
            return
        journal, batch = await asyncio.to_thread(_open, self._journal(batch_id), data)
        try:
            status = await asyncio.to_thread(
                self.batches.advance, batch_id, self.runner, "in_progress", total=len(batch.lines)
            )
            if status is None:
                raise LostClaim
            if status != "cancelling":
                service = BatchService(
                    self.services,
                    journal=journal,
                    concurrency=self.concurrency,
                    progress=Progress(disable=True),
                    owner=(row.api_key_id, row.tenant),
                )
                await self._send(batch_id, service, batch)
        finally:
            journal.close()
        await self._finalize(row, journal, batch)
        self._journal(batch_id).unlink(missing_ok=True)

    async def _send(self, batch_id: str, service: BatchService, batch: Input) -> None:
        """The engine's `answer`, watched: the counts published, the claim renewed, a cancel obeyed."""
        watch = asyncio.create_task(self._watch(batch_id, service))
        try:
            await answer(service, batch)
        finally:
            watch.cancel()
            (outcome,) = await asyncio.gather(watch, return_exceptions=True)
        if isinstance(outcome, LostClaim):
            raise outcome

    async def _watch(self, batch_id: str, service: BatchService) -> None:
        while True:
            counts = _counts([entry["output"] for entry in service.journal.entries.values()])
            try:
                status = await asyncio.to_thread(self.batches.beat, batch_id, self.runner, **counts)
            except SQLAlchemyError as exc:  # the claim lasts LEASE_S: the next beat may get through
                log.warning("batch %s: state not saved (%s)", batch_id, type(exc).__name__)
            else:
                if status is None or status == "cancelling":
                    service.stop()  # those in flight finish and are journaled
                if status is None:
                    raise LostClaim
            await asyncio.sleep(BEAT_S)

    async def _finalize(self, row: BatchRow, journal: Journal, batch: Input) -> None:
        status = await asyncio.to_thread(self.batches.advance, row.id, self.runner, "finalizing")
        if status is None:
            raise LostClaim
        lines = outputs(journal, batch)
        unsent = [
            error_line(custom_id, number, "batch_cancelled", "The batch was cancelled before this request was sent.")
            for number, custom_id, _ in batch.requests
            if number not in journal.entries
        ]
        answers = [line for line in lines if succeeded(line)]
        errors = [line for line in lines if not succeeded(line)] + unsent
        # The files' ids follow from the batch's: a finish repeated after a crash rewrites the same files.
        output_id, error_id = (
            _file_id(row.id, "output") if answers else None,
            _file_id(row.id, "error") if errors else None,
        )
        files = await asyncio.to_thread(
            lambda: [
                self.files.output(file_id, f"{row.id}_{kind}.jsonl", kept, row)
                for file_id, kind, kept in ((output_id, "output", answers), (error_id, "error", errors))
                if file_id
            ]
        )
        ending = "cancelled" if status == "cancelling" else "completed"
        counts = _counts(lines)
        if not await asyncio.to_thread(
            self.batches.finish,
            row.id,
            self.runner,
            files,
            status=ending,
            total=len(batch.lines),
            output_file_id=output_id,
            error_file_id=error_id,
            **counts,
        ):
            raise LostClaim
        log.info("batch %s %s: %d answered, %d failed", row.id, ending, counts["completed"], counts["failed"])

    async def _fail(self, batch_id: str, code: str, message: str) -> None:
        try:
            await asyncio.to_thread(
                self.batches.finish,
                batch_id,
                self.runner,
                [],
                status="failed",
                errors=[{"code": code, "message": message}],
            )
        except SQLAlchemyError as exc:  # stays claimed: resumed once the claim goes stale
            log.warning("batch %s: failure not saved (%s)", batch_id, type(exc).__name__)


def _open(path: Path, data: bytes) -> tuple[Journal, Input]:
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(path, hashlib.sha256(data).hexdigest())
    return journal, read_input(data, journal)


def _counts(lines: list[dict[str, Any]]) -> dict[str, int]:
    """OpenAI's request counts: answered, and failed (an error answer, or a line that never became a request)."""
    completed = sum(1 for line in lines if succeeded(line))
    return {"completed": completed, "failed": len(lines) - completed}


def _file_id(batch_id: str, kind: str) -> str:
    return f"file-{uuid.uuid5(uuid.NAMESPACE_URL, f'{batch_id}/{kind}').hex}"
