"""`moe batch run`: answer a JSONL file of chat requests, routed as the gateway routes them, expert by expert.

Why expert by expert: a fleet that loads models on demand (one GPU, several models) pays a model
swap whenever consecutive requests want different models. Sending each expert its requests
together loads each model once per pass, as Symbolic-MoE batches the queries of each expert.

1. Parse every line (an OpenAI Batch API line or a bare chat body); a bad line gets its own error.
2. Route every request before any expert is called (the gateway's routers and virtual models; a
   request naming an expert skips routing), all at once through the gateway's own `_route`, whose
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
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, TaskID

from experts.client import ExpertFailure
from experts.health import HealthMonitor
from gateway.app import StartupError, load_routers
from gateway.bodies import BodyError, bad_request, parsed_body
from gateway.config import GatewayConfig
from gateway.decision_log import DecisionLog, DecisionRecord, make_engine
from gateway.errors import APIError
from gateway.keys import KeyGuard, KeyStore
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from gateway.rate_limit import RateLimiter
from gateway.serving import ChatService, Target
from gateway.settings import Settings
from gateway.shared_state import SharedState

CHAT_URL = "/v1/chat/completions"


class BatchError(Exception):
    """The batch cannot run at all (as opposed to one bad line); the message says what to do."""


class LineError(Exception):
    """A line that is no chat request: reported in that line's `error`, the batch goes on."""

    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.custom_id = custom_id


# -- input and output lines ---------------------------------------------------------------------
def parse_line(raw: bytes, number: int) -> tuple[str, dict[str, Any]]:
    """(custom_id, chat body) of one line; bare bodies are named `line-<number>`."""
    try:
        line = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineError("invalid_json", f"line {number} is not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError("invalid_line", f"line {number} is not a JSON object")
    if "body" not in line and "custom_id" not in line:
        return f"line-{number}", line
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("invalid_custom_id", f"line {number}: custom_id must be a non-empty string")
    if line.get("method", "POST") != "POST" or line.get("url", CHAT_URL) != CHAT_URL:
        raise LineError("unsupported_url", f"line {number}: only POST {CHAT_URL} is supported", custom_id)
    if not isinstance(line.get("body"), dict):
        raise LineError("invalid_body", f"line {number}: body must be a JSON object", custom_id)
    return custom_id, line["body"]


def validate_body(body: dict[str, Any]) -> ChatCompletionRequest:
    """The body as the gateway would read it, or the 400 the gateway would answer."""
    try:
        # A batch answer is one body: a `stream` flag is ignored (and not recorded as a streamed request).
        return parsed_body({**body, "stream": False, "stream_options": None}, ChatCompletionRequest)
    except BodyError as error:
        raise bad_request(error) from None


def answer_line(custom_id: str, request_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's Batch output line for a request that got an HTTP answer (an error status included)."""
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(custom_id: str | None, number: int, code: str, message: str) -> dict[str, Any]:
    """OpenAI's Batch output line for a line that never became a request."""
    return {
        "id": f"batch_req_{uuid.uuid4()}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message, "line": number},
    }


# -- the journal --------------------------------------------------------------------------------
class Journal:
    """OUT.partial: a header naming the input, then one entry per finished request, appended as it finishes.

    Each entry is flushed to the OS as soon as it is written, which is what survives a SIGKILL
    (fsync would only add protection against power loss, at a cost per request).
    """

    def __init__(self, path: Path, input_sha256: str) -> None:
        self.path = path
        self.entries: dict[int, dict[str, Any]] = {}  # line number -> {"line", "output", "record"}
        if path.exists():
            self._load(input_sha256)
        else:
            path.write_text(json.dumps({"input_sha256": input_sha256}) + "\n")
        self._file: IO[bytes] = path.open("ab")

    def _load(self, input_sha256: str) -> None:
        data = self.path.read_bytes()
        *complete, torn = data.split(b"\n")
        if torn:  # a kill in the middle of a write leaves a last line without its newline
            with self.path.open("r+b") as fh:
                fh.truncate(len(data) - len(torn))
        if not complete:
            self.path.write_text(json.dumps({"input_sha256": input_sha256}) + "\n")
            return
        if json.loads(complete[0]).get("input_sha256") != input_sha256:
            raise BatchError(f"{self.path} belongs to another input file; delete it to start this batch afresh")
        for raw in complete[1:]:
            entry = json.loads(raw)
            self.entries[entry["line"]] = entry

    def append(self, number: int, output: dict[str, Any], record: DecisionRecord | None) -> None:
        entry = {"line": number, "output": output, "record": json.loads(record.to_json()) if record else None}
        self._file.write((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        self._file.flush()
        self.entries[number] = entry

    def records(self) -> list[DecisionRecord]:
        return [DecisionRecord.from_json(json.dumps(e["record"])) for e in self.entries.values() if e["record"]]

    def close(self) -> None:
        self._file.close()


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


class BatchService(ChatService):
    """The gateway's ChatService answering a file: the same routing, expert clients and records."""

    def __init__(self, *args: Any, journal: Journal, concurrency: int, progress: Progress, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal
        self.concurrency = concurrency
        self.progress = progress
        self.routing: TaskID = progress.add_task("routing", total=None)
        self.answering: TaskID = progress.add_task("answering", total=None)
        self._order = {e.name: i for i, e in enumerate(self.config.experts)}
        self._server = {e.name: e.api_base.rstrip("/") for e in self.config.experts}

    async def route(self, jobs: list[Job]) -> None:
        self.progress.update(self.routing, total=len(jobs))

        async def route_one(job: Job) -> None:
            job.candidates = await self._route(job.target, job.body, job.record, job.body.wire_messages())
            self.progress.advance(self.routing)

        await asyncio.gather(*(route_one(job) for job in jobs))

    async def send(self, jobs: list[Job]) -> None:
        """Round after round until every job is done: each job goes to its next candidate."""
        pending = jobs
        while pending:
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
            await self.attempt(job)

    async def attempt(self, job: Job) -> None:
        """Call the job's next candidate; finish the job unless it may fall back to another one."""
        name = job.expert
        try:  # a row of the decision record, kept as the gateway keeps its calls
            call, started, payload = await self._call(
                job.record, name, lambda: self.clients[name].complete(job.body.wire_messages(), job.body.upstream_params())
            )
        except ExpertFailure as failure:
            job.failures.append(failure)
            if failure.can_fall_back and len(job.record.calls) < len(job.candidates):
                return  # the next round sends it to its next-ranked expert
            error = self._all_failed(job.failures)
            self._fail(job.record, error, "error")
            self.settle(job, error.status, error.body())
            return
        self.settle(job, 200, self._answer(job.record, call, started, payload))

    def settle(self, job: Job, status: int, body: dict[str, Any]) -> None:
        # Journal first: once the entry exists the request is never sent again.
        self.journal.append(job.number, answer_line(job.custom_id, job.record.id, status, body), job.record)
        self._record(job.record)
        job.done = True
        self.progress.advance(self.answering)


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
        return (f"{self.requests} requests ({self.resumed} from an earlier run): {self.ok} ok, {self.failed} failed; "
                f"answered by {experts}; {self.wall_s:.1f}s; wrote {self.out}")


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


async def run_batch(
    settings: Settings,
    config: GatewayConfig,
    source: Path,
    out: Path,
    *,
    concurrency: int = 8,
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

    lines = [(number, raw) for number, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    requests: list[tuple[int, str, ChatCompletionRequest]] = []
    seen: set[str] = set()
    for number, raw in lines:
        try:
            custom_id, body = parse_line(raw, number)
            if custom_id in seen:
                raise LineError("duplicate_custom_id", f"line {number}: custom_id {custom_id!r} is used by an earlier line", custom_id)
            seen.add(custom_id)
            if number not in journal.entries:
                requests.append((number, custom_id, validate_body(body)))
        except LineError as exc:
            if number not in journal.entries:
                journal.append(number, error_line(exc.custom_id, number, exc.code, str(exc)), None)
        except APIError as exc:
            journal.append(number, answer_line(custom_id, str(uuid.uuid4()), exc.status, exc.body()), None)

    virtual = {v.name for v in config.virtual_models}
    try:
        routers = await asyncio.to_thread(load_routers, config) if any(
            r.model.partition(":")[0] in virtual for _, _, r in requests
        ) else {}
    except StartupError as exc:
        journal.close()
        raise BatchError(str(exc)) from None

    decision_log = DecisionLog(make_engine(settings.database_url), settings.moe_spill_dir,
                               max_buffer=settings.moe_log_buffer, flush_interval_s=settings.moe_log_flush_s)
    if not await asyncio.to_thread(decision_log.ping):
        console.print(f"[yellow]decision log not reachable or not migrated (`moe db upgrade`)[/yellow]: "
                      f"records will wait in {settings.moe_spill_dir}")
    health = HealthMonitor(config.experts, settings.moe_health_interval_s)
    state = SharedState(None)  # no response cache; breakers do not matter once every request is routed
    # Batch requests carry no API key (whoever runs the CLI has the config), so nothing is charged to one.
    keys = KeyGuard(KeyStore(decision_log.engine), RateLimiter(state), required=False, cache_ttl_s=1.0)
    progress = Progress(console=console, transient=False)
    service = service_class(config, routers, decision_log, health, state, keys=keys, metrics=GatewayMetrics(),
                            log_prompts=settings.moe_log_prompts, journal=journal, concurrency=concurrency,
                            progress=progress)
    await decision_log.start()
    try:
        for record in journal.records():  # what an interrupted run may not have flushed
            decision_log.record(record)
        jobs: list[Job] = []
        for number, custom_id, body in requests:
            try:
                target = service.resolve(body.model)
                vm = target.virtual_model
                if vm and (vm.synthesis or vm.vote or vm.cascade):
                    raise APIError(400, f"`{body.model}` answers with several experts; batches send each request "
                                   "to one expert", param="model", code="unsupported_in_batch")
            except APIError as exc:
                journal.append(number, answer_line(custom_id, str(uuid.uuid4()), exc.status, exc.body()), None)
                continue
            jobs.append(Job(number, custom_id, body, target, service._new_record(body, target, None, body.wire_messages())))
        await health.check_all()  # once: experts down now are ranked last, as the gateway ranks them
        progress.update(service.answering, total=len(lines), completed=len(lines) - len(jobs))
        with progress:
            await service.route(jobs)
            await service.send(jobs)
    finally:
        await service.aclose()
        journal.close()
        await decision_log.stop()

    outputs = [journal.entries[number]["output"] for number, _ in lines]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(o, separators=(",", ":")) + "\n" for o in outputs))
    tmp.replace(out)
    partial.unlink()
    answered = [o for o in outputs if o["response"] and o["response"]["status_code"] == 200]
    return Summary(
        requests=len(outputs),
        resumed=resumed,
        ok=len(answered),
        failed=len(outputs) - len(answered),
        by_expert=Counter(o["response"]["body"]["model"] for o in answered),
        wall_s=time.perf_counter() - started,
        out=out,
    )
