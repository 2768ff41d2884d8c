"""`moe batch run` and the Batch API's batches: answer a JSONL file of chat requests, routed as the gateway routes
them, expert by expert. The CLI builds the gateway's services for one run (`run_batch`); the gateway runs its
batches on its own (gateway/batch/jobs.py); both go through `read_input` and `answer`.

Why expert by expert: a fleet that loads models on demand (one GPU, several models) pays a model
swap whenever consecutive requests want different models. Sending each expert its requests
together loads each model once per pass, as Symbolic-MoE batches the queries of each expert.

1. Parse every line (an OpenAI Batch API line or a bare chat body); a bad line gets its own error.
2. Route every request before any expert is called (the gateway's routers and virtual models; a
   request naming an expert skips routing), all at once through the gateway's own `ChatService.route`, whose
   batcher routes up to 32 queued queries in one forward pass.
3. Send: per server (api_base), one expert's requests at a time with at most `concurrency` in
   flight; different servers in parallel. A request whose expert fails in a way that allows
   fallback goes to its next-ranked expert in the next round, again grouped by expert.
4. Each finished request is appended to OUT.partial (its output line and its decision record)
   before it counts as done. A rerun after a kill sends only requests with no entry there, and
   re-records the journaled decision records (inserts ignore rows already present). Requests in
   flight at the kill have no answer and are sent again. Once all are done OUT is written in input
   order and the journal removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from experts.client import ExpertFailure
from experts.pool import Answer
from gateway.batch.journal import (
    BatchError,
    Journal,
    LineError,
    answer_line,
    error_line,
    parse_line,
    succeeded,
    validate_body,
)
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.serving import all_failed
from gateway.chat.targets import Target
from gateway.config import GatewayConfig
from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError
from gateway.observability.metrics import GatewayMetrics
from gateway.services import Services, StartupError, load_routers
from gateway.settings import Settings

CONCURRENCY = 8  # requests in flight per expert, unless a run asks otherwise
Owner = tuple[int | None, str | None]  # the API key id and tenant a batch's decision records name


# -- sending ------------------------------------------------------------------------------------
@dataclass
class Job:
    """One valid request of the batch, from routing to its answer."""

    number: int  # its line in the input: its place in the output and its key in the journal
    custom_id: str
    body: ChatCompletionRequest
    target: Target
    record: DecisionRecord
    candidates: list[str] = field(default_factory=list)  # experts to try, best first
    failures: list[ExpertFailure] = field(default_factory=list)
    done: bool = False

    @property
    def expert(self) -> str:
        """Where the next attempt goes: the candidate after those already tried."""
        return self.candidates[len(self.record.calls)]


class BatchService:
    """Answering a file with the gateway's services: the same routing, expert pool and records."""

    def __init__(
        self, services: Services, *, journal: Journal, concurrency: int, progress: Progress, owner: Owner = (None, None)
    ) -> None:
        self.services = services
        self.chat = services.chat
        self.journal = journal
        self.concurrency = concurrency
        self.progress = progress
        self.owner = owner
        self.stopped = False
        self.routing: TaskID = progress.add_task("routing", total=None)
        self.answering: TaskID = progress.add_task("answering", total=None)
        experts = services.config.experts
        self._order = {e.name: i for i, e in enumerate(experts)}
        self._server = {e.name: (e.api_base or e.name).rstrip("/") for e in experts}

    async def route(self, jobs: list[Job]) -> None:
        self.progress.update(self.routing, total=len(jobs))

        async def route_one(job: Job) -> None:
            job.candidates = await self.chat.route(job.target, job.record, job.body.wire_messages())
            self.progress.advance(self.routing)

        await asyncio.gather(*(route_one(job) for job in jobs))

    def stop(self) -> None:
        """Send no more requests (a cancelled batch): those in flight finish and are journaled, the rest stay undone."""
        self.stopped = True

    async def send(self, jobs: list[Job]) -> None:
        """Round after round until every job is done: each job goes to its next candidate."""
        pending = jobs
        while pending and not self.stopped:
            servers: dict[str, dict[str, list[Job]]] = {}
            for job in sorted(pending, key=lambda j: self._order[j.expert]):  # stable: input order per expert
                servers.setdefault(self._server[job.expert], {}).setdefault(job.expert, []).append(job)
            await asyncio.gather(*(self._drain(groups) for groups in servers.values()))
            pending = [job for job in pending if not job.done]

    async def _drain(self, groups: dict[str, list[Job]]) -> None:
        """One server's experts, one after another (a server that swaps models loads each once)."""
        for expert, jobs in groups.items():
            self.progress.update(self.answering, description=f"answering: {expert}")
            slots = asyncio.Semaphore(self.concurrency)
            await asyncio.gather(*(self._bounded(slots, job) for job in jobs))

    async def _bounded(self, slots: asyncio.Semaphore, job: Job) -> None:
        async with slots:
            if not self.stopped:
                await self.attempt(job)

    async def attempt(self, job: Job) -> None:
        """Call the job's next candidate; finish the job unless it may fall back to another one."""
        name = job.expert
        pool = self.services.pool
        messages, params = job.body.wire_messages(), job.body.upstream_params()
        try:  # a row of the decision record, kept as the gateway keeps its calls
            call, started, payload = await pool.call(
                job.record.calls, name, lambda: pool.clients[name].complete(messages, params)
            )
        except ExpertFailure as failure:
            job.failures.append(failure)
            if failure.can_fall_back and len(job.record.calls) < len(job.candidates):
                return  # the next round sends it to its next-ranked expert
            error = all_failed(job.failures)
            self.chat.failed(job.record, error)
            self.settle(job, error.status, error.body())
            return
        call.answered(started, payload.get("usage"))
        self.settle(job, 200, self.chat.answered(job.record, Answer(name, payload), call.latency_ms))

    def settle(self, job: Job, status: int, body: dict[str, Any]) -> None:
        # Journal first: once the entry exists the request is never sent again.
        self.journal.append(job.number, answer_line(job.custom_id, job.record.id, status, body), job.record)
        self.chat.record(job.record)
        job.done = True
        self.progress.advance(self.answering)


@dataclass
class Input:
    """A batch file as read against its journal."""

    lines: list[int]  # the numbers of its non-blank lines: the output's lines, in this order
    requests: list[tuple[int, str, ChatCompletionRequest]]  # (line, custom_id, body) of valid requests not journaled


def read_input(data: bytes, journal: Journal) -> Input:
    """Parse every line; a line that is no valid request is journaled with its error (once) and sent nowhere."""
    lines = [(number, raw) for number, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    requests: list[tuple[int, str, ChatCompletionRequest]] = []
    seen: set[str] = set()
    for number, raw in lines:
        try:
            custom_id, body = parse_line(raw, number)
            if custom_id in seen:
                raise LineError(
                    "duplicate_custom_id",
                    f"line {number}: custom_id {custom_id!r} is used by an earlier line",
                    custom_id,
                )
            seen.add(custom_id)
            if number not in journal.entries:
                requests.append((number, custom_id, validate_body(body)))
        except LineError as exc:
            if number not in journal.entries:
                journal.append(number, error_line(exc.custom_id, number, exc.code, str(exc)), None)
        except APIError as exc:
            journal.append(number, answer_line(custom_id, str(uuid.uuid4()), exc.status, exc.body()), None)
    return Input([number for number, _ in lines], requests)


async def answer(service: BatchService, batch: Input) -> None:
    """Route every request of `batch` not answered yet, then send them expert by expert (services started)."""
    services, journal = service.services, service.journal
    for record in journal.records():  # what an interrupted run may not have flushed
        services.decision_log.record(record)
    jobs: list[Job] = []
    for number, custom_id, body in batch.requests:
        try:
            target = services.chat.targets.resolve(body.model)
            vm = target.virtual_model
            if vm and (vm.synthesis or vm.vote or vm.cascade):
                raise APIError(
                    400,
                    f"`{body.model}` answers with several experts; batches send each request to one expert",
                    param="model",
                    code="unsupported_in_batch",
                )
        except APIError as exc:
            journal.append(number, answer_line(custom_id, str(uuid.uuid4()), exc.status, exc.body()), None)
            continue
        record = services.chat.new_record(body, target, None, body.wire_messages())
        record.api_key_id, record.tenant = service.owner
        jobs.append(Job(number, custom_id, body, target, record))
    progress = service.progress
    progress.update(service.answering, total=len(batch.lines), completed=len(batch.lines) - len(jobs))
    with progress:
        await service.route(jobs)
        await service.send(jobs)


def outputs(journal: Journal, batch: Input) -> list[dict[str, Any]]:
    """The output lines journaled so far, in input order."""
    return [journal.entries[number]["output"] for number in batch.lines if number in journal.entries]


@dataclass
class Summary:
    requests: int
    resumed: int  # answered by an earlier, interrupted run
    ok: int
    failed: int
    by_expert: Counter[str]
    wall_s: float
    out: Path

    def __str__(self) -> str:
        experts = ", ".join(f"{name} {count}" for name, count in sorted(self.by_expert.items())) or "-"
        return (
            f"{self.requests} requests ({self.resumed} from an earlier run): {self.ok} ok, {self.failed} failed; "
            f"answered by {experts}; {self.wall_s:.1f}s; wrote {self.out}"
        )


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


async def run_batch(
    settings: Settings,
    config: GatewayConfig,
    source: Path,
    out: Path,
    *,
    concurrency: int = CONCURRENCY,
    console: Console | None = None,
    service_class: type[BatchService] = BatchService,
) -> Summary:
    started = time.perf_counter()
    console = console or Console(stderr=True)
    data = source.read_bytes()
    partial = journal_path(out)
    if out.exists() and not partial.exists():
        raise BatchError(f"{out} already exists; remove it or choose another output file")
    journal = Journal(partial, hashlib.sha256(data).hexdigest())
    resumed = len(journal.entries)
    batch = read_input(data, journal)

    virtual = {v.name for v in config.virtual_models}
    try:
        routers = (
            await asyncio.to_thread(load_routers, config)
            if any(r.model.partition(":")[0] in virtual for _, _, r in batch.requests)
            else {}
        )
    except StartupError as exc:
        journal.close()
        raise BatchError(str(exc)) from None

    services = Services.build(settings, config, routers, metrics=GatewayMetrics(), serving=False)
    if not await asyncio.to_thread(services.decision_log.ping):
        console.print(
            f"[yellow]decision log not reachable or not migrated (`moe db upgrade`)[/yellow]: "
            f"records will wait in {settings.moe_spill_dir}"
        )
    progress = Progress(console=console, transient=False)
    service = service_class(services, journal=journal, concurrency=concurrency, progress=progress)
    # Experts are probed once, as start-up: experts down now are ranked last, as the gateway ranks them.
    await services.start(background=False)
    try:
        await answer(service, batch)
    finally:
        journal.close()
        await services.stop()

    lines = outputs(journal, batch)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(o, separators=(",", ":")) + "\n" for o in lines))
    tmp.replace(out)
    partial.unlink()
    answered = [o for o in lines if succeeded(o)]
    return Summary(
        requests=len(lines),
        resumed=resumed,
        ok=len(answered),
        failed=len(lines) - len(answered),
        by_expert=Counter(o["response"]["body"]["model"] for o in answered),
        wall_s=time.perf_counter() - started,
        out=out,
    )
