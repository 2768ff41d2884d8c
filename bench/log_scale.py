"""The decision log at scale: 1,000,000 decision records through the gateway's batched writer into PostgreSQL, the
retraining window's query over them, and a gateway under load beside the writer.

One run, on a fresh PostgreSQL database made for it and dropped after it:

1. The scripted upstream and a gateway (`moe serve`, `moe-auto`, its own decision log in the same database) start;
   two loads (wrk, bench/harness.py) measure its latency with the database idle: `before`. A closed loop, which
   saturates the gateway, so every core-second the writer takes shows; and a paced one (each client waits
   `--pause-ms` on average after an answer), a gateway serving well below its capacity, as one sized for its
   traffic does.
2. The writer starts: this process feeds synthetic but realistic records (three virtual models on two routers,
   ranked experts, one expert call each or two after a fallback, 2% errors, 5% explored; the busiest virtual model
   keeps its text: a MMLU-Pro question as the prompt, an answer) to gateway/decisions/log.py's DecisionLog at
   `--rate` records/s (5,500: the target of 5,000 and a tenth; 0: as fast as it drains them), never past a
   backlog of a few batches, so nothing spills: a writer that cannot keep up shows as a lower rate. Their times spread over
   the 30 days before the run, oldest first, as a month of traffic would have written them. Once it is past
   its start, the same loads measure the gateway again: `with_writer`.
3. The writer finishes (its records/s over the run and per minute are reported); the loads measure the
   gateway once more: `after`. The two measurements without the writer tell the noise apart from a change, per
   load.
4. Feedback is seeded (user thumbs on 5% of decisions, a judge's score on 2%), the tables analysed as autovacuum
   would, and the retraining window's query (migrations/decision_window.py: one virtual model's last day, then
   its last 7 days, joined to its feedback) is timed, with PostgreSQL's EXPLAIN ANALYZE of what it ran and the
   indexes it used.

    python -m bench.log_scale                 # 1,000,000 records -> bench/results/log_scale.json
    python -m bench.log_scale --rate 0        # the writer flat out: its capacity, and the most it takes from others
    python -m bench.log_scale --smoke         # 20,000 records, short loads -> var/bench/log_scale.smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import random
import re
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text

from bench.harness import (
    DEFAULT_ROUTER,
    ROOT,
    OtherWork,
    Processes,
    Target,
    command_line,
    console,
    gateway_config,
    machine,
    measure,
    questions,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
    wrk_version,
)
from bench.soak import DEFAULT_POSTGRES, fresh_database
from experts.pool import ExpertCall
from gateway.config import StoreTextConfig
from gateway.decisions.log import BATCH, DecisionLog, make_engine
from gateway.decisions.record import DecisionRecord
from gateway.migrate import upgrade
from migrations.decision_window import count_window, read_window

TARGET_RECORDS_PER_S = 5_000.0
BACKLOG = 8 * BATCH  # records the feeder keeps waiting in the log's buffer: the writer never idles, nothing spills
SPAN = timedelta(days=30)  # the records' times: the month before the run
PAUSE_MS = 50  # the paced load's mean pause: 8 clients send ~150 req/s, under a third of the closed loop's ~500 here
WINDOWS = (timedelta(days=1), timedelta(days=7))  # the retraining windows queried: a day's traffic, a week's
EXPERTS = ("stem", "humanities", "general")
# (virtual model, router, share of traffic, keeps its text)
VIRTUAL_MODELS = (("moe-auto", "embedding-domain", 0.7, True), ("moe-code", "skill-based", 0.2, False),
                  ("moe-cheap", "embedding-domain", 0.1, False))
POOL = 4096  # distinct records the synthetic ones are drawn from
SHARES = [share for _, _, share, _ in VIRTUAL_MODELS]
KEEP_TEXT = StoreTextConfig()


@dataclass
class Traffic:
    """Synthetic decision records, seeded: POOL distinct ones drawn at random, then each record one of them under a
    new id and its own time (so that feeding them costs this process little of the CPU the writer needs); the
    decisions that will get feedback are noted as they are made."""

    records: int
    texts: list[str]
    start: datetime
    rng: random.Random = field(default_factory=lambda: random.Random(15))
    feedback: list[tuple[str, str, float, datetime]] = field(default_factory=list)
    pool: list[DecisionRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool = [self._draw(i) for i in range(POOL)]

    def record(self, i: int) -> DecisionRecord:
        created = self.start + SPAN * (i / self.records)
        record = copy.copy(self.pool[i % POOL])  # its lists shared: the writer only reads them
        record.id, record.created_at = str(uuid.uuid4()), created
        draw = self.rng.random()
        if record.status == "ok" and draw < 0.07:
            source, score = ("user", float(draw < 0.035)) if draw < 0.05 else ("judge:general", draw / 0.07)
            self.feedback.append((record.id, source, score, created + timedelta(minutes=5)))
        return record

    def _draw(self, i: int) -> DecisionRecord:
        rng = self.rng
        virtual_model, router, _, keeps_text = rng.choices(VIRTUAL_MODELS, SHARES)[0]
        question = self.texts[rng.randrange(len(self.texts))]
        scores = sorted(((rng.random(), name) for name in EXPERTS), reverse=True)
        explored = rng.random() < 0.05
        chosen = rng.choice([name for _, name in scores[1:]]) if explored else scores[0][1]
        ok = rng.random() >= 0.02
        calls = [ExpertCall(0, chosen, self.start, "ok" if ok else "upstream_5xx", rng.uniform(200, 2000), None,
                            None if ok else "upstream exploded", 180, rng.randint(10, 400) if ok else None)]
        if rng.random() < 0.05:  # a fallback: another expert timed out first
            failed = next(name for _, name in scores if name != chosen)
            calls.insert(0, ExpertCall(0, failed, self.start, "timeout", 60_000.0, None, "took over 60 s"))
            calls[1].attempt = 1
        record = DecisionRecord(
            requested_model=virtual_model, request_hash=hashlib.sha256(question.encode()).hexdigest(), stream=i % 2 == 0,
            virtual_model=virtual_model, router=router, router_version="bench-v1",
            ranked=[{"expert": name, "score": round(score, 6)} for score, name in scores], recruited=[chosen],
            chosen_expert=chosen, confidence=round(scores[0][0], 6), propensity=0.05 / 2 if explored else 0.95,
            explored=explored, routing_ms=rng.uniform(2, 9), upstream_ms=calls[-1].latency_ms,
            ttft_ms=rng.uniform(50, 300), prompt_tokens=180, completion_tokens=calls[-1].completion_tokens,
            cost_usd=2e-5 if ok else None, status="ok" if ok else "error", http_status=200 if ok else 502,
            api_key_id=i % 20, tenant=f"tenant-{i % 5}", calls=calls,
        )
        if keeps_text:
            record.store_text, record.messages = KEEP_TEXT, [{"role": "user", "content": question}]
            record.keep_answer(f"The answer is ({'ABCD'[i % 4]}): {question[:200]}")
        return record


@dataclass
class WriterRun:
    """The writer's progress, sampled every second: (seconds since it started, records written)."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    started: float = 0.0
    finished: float | None = None
    cpu_s: float = 0.0  # this process's CPU time over the run: feeding the records and writing them
    spilled_files: int = 0
    dead_letters: int = 0

    def written_at(self, moment: float) -> tuple[float, int]:
        return min(self.samples, key=lambda s: abs(self.started + s[0] - moment))


async def write_all(log: DecisionLog, traffic: Traffic, rate: float, run: WriterRun) -> None:
    """Feed the records at `rate` a second (0: as fast as the log drains them), then flush."""
    await log.start()
    run.started, cpu0 = time.monotonic(), time.process_time()
    run.samples.append((0.0, 0))

    async def sample() -> None:
        while True:
            await asyncio.sleep(1.0)
            run.samples.append((time.monotonic() - run.started, log.written))

    sampler = asyncio.create_task(sample())
    for i in range(traffic.records):
        if rate and i % 50 == 0 and (ahead := run.started + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(ahead)
        while log.pending >= BACKLOG:
            await asyncio.sleep(0.002)
        log.record(traffic.record(i))
    while log.written < traffic.records and log.status().writing:
        await asyncio.sleep(0.01)
    run.finished = time.monotonic()
    run.cpu_s = time.process_time() - cpu0
    sampler.cancel()
    run.samples.append((run.finished - run.started, log.written))
    status = log.status()
    run.spilled_files, run.dead_letters = status.spilled_files, status.dead_letters
    await log.stop()


def throughput(run: WriterRun, records: int, window_s: float = 60.0) -> dict[str, Any]:
    """Records/s over the whole run and over each whole window of `window_s` (the last, partial one apart)."""
    assert run.finished is not None
    total_s = run.finished - run.started
    windows = []
    start_t, start_n = run.samples[0]
    for t, n in run.samples[1:]:
        if t > start_t and (t - start_t >= window_s or (t, n) == run.samples[-1]):
            windows.append({"from_s": round(start_t, 1), "until_s": round(t, 1), "records": n - start_n,
                            "records_per_s": round((n - start_n) / (t - start_t), 1)})
            start_t, start_n = t, n
    whole = [w for w in windows if w["until_s"] - w["from_s"] >= window_s * 0.95]
    rates = [w["records_per_s"] for w in whole]
    return {"records": records, "seconds": round(total_s, 1), "records_per_s": round(records / total_s, 1),
            "window_s": window_s, "windows": windows,
            "slowest_whole_window_records_per_s": min(rates) if rates else None,
            "cpu_us_per_record": round(run.cpu_s / records * 1e6, 1)}


def seed_feedback(engine: Engine, feedback: list[tuple[str, str, float, datetime]]) -> None:
    """By COPY: seeding, not what is measured."""
    copy_in = "COPY feedback (decision_id, source, score, created_at, updated_at) FROM STDIN"
    with engine.begin() as conn, conn.connection.driver_connection.cursor() as cursor, cursor.copy(copy_in) as copy:
        for decision_id, source, score, created in feedback:
            copy.write_row((decision_id, source, score, created, created))


def retrain_query(engine: Engine, until: datetime, window: timedelta, repeats: int = 3) -> dict[str, Any]:
    """The retraining window's query as migrations/decision_window.py runs it: timed, then explained."""
    since = until - window
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters))

    times, rows = [], 0
    for _ in range(repeats):
        statements.clear()
        event.listen(engine, "before_cursor_execute", capture)
        started = time.perf_counter()
        rows = sum(1 for _ in read_window(engine, since=since, until=until, virtual_models=["moe-auto"]))
        times.append(time.perf_counter() - started)
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((s, p) for s, p in statements if "feedback" in s)
    started = time.perf_counter()
    counted = count_window(engine, since=since, until=until, virtual_models=["moe-auto"])
    count_s = time.perf_counter() - started
    with engine.connect() as conn:
        plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)]
    used = sorted(set(re.findall(r"(?:Index (?:Only )?Scan using|Bitmap Index Scan on) (\w+)", "\n".join(plan))))
    return {"query": f"migrations.decision_window.read_window(since=until-{window.days}d, until, "
                     "virtual_models=['moe-auto'])",
            "window_days": window.days, "rows": rows, "count_window": counted,
            "read_s": [round(t, 3) for t in times], "read_median_s": round(statistics.median(times), 3),
            "count_s": round(count_s, 3), "indexes_used": used, "explain_analyze": plan, "statement": statement}


def p99_check(before: dict[str, Any], with_writer: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The gateway's p99 beside the writer against the two measurements without it: a change beyond noise is one
    past the higher of them by more than their own difference (floored at a tenth of the higher: two quiet runs
    may agree by chance)."""
    quiet = [before["p99_ms"], after["p99_ms"]]
    noise = max(abs(quiet[0] - quiet[1]), 0.1 * max(quiet))
    limit = max(quiet) + noise
    return {"p99_before_ms": quiet[0], "p99_with_writer_ms": with_writer["p99_ms"], "p99_after_ms": quiet[1],
            "noise_ms": round(noise, 3), "limit_ms": round(limit, 3),
            "change_ms": round(with_writer["p99_ms"] - statistics.mean(quiet), 3),
            "met": with_writer["p99_ms"] <= limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, help="decision records written (default 1,000,000; 20,000 with --smoke)")
    parser.add_argument("--rate", type=float, default=1.1 * TARGET_RECORDS_PER_S,
                        help="records/s offered to the writer (default 5,500; 0: as fast as it writes them)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the gateway, in either load")
    parser.add_argument("--pause-ms", type=int, default=PAUSE_MS,
                        help="what each client of the paced load waits after an answer, on average")
    parser.add_argument("--duration", type=int, default=30, help="seconds of each measured load")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="a PostgreSQL server URL whose user may create databases (default: $MOE_TEST_POSTGRES_URL "
                             "or the local server)")
    parser.add_argument("--smoke", action="store_true",
                        help="a smoke run: 20,000 records, 3 s loads (1 s of warm-up), written under var/bench/")
    parser.add_argument("--out", type=Path, help="report JSON; default bench/results/log_scale.json, or "
                        "var/bench/log_scale.smoke.json with --smoke")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.warmup = 3, 1
    args.records = args.records or (20_000 if args.smoke else 1_000_000)
    out: Path = args.out or ROOT / ("var/bench/log_scale.smoke.json" if args.smoke else "bench/results/log_scale.json")
    version = router_version(args.router)
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-log-scale-"))
    prompts = questions(2000)
    traffic = Traffic(args.records, prompts, datetime.now(UTC) - SPAN)
    run = WriterRun()
    with fresh_database(args.postgres, "moe_log_scale") as database_url, Processes(work) as procs:
        upgrade(database_url)
        upstream_v1 = start_upstream(procs)
        gateway = start_gateway(procs, gateway_config(upstream_v1, args.router), database_url)
        target = {"gateway_routed": Target(f"{gateway}/v1/chat/completions", "moe-auto")}
        watch = OtherWork()
        watch.start()

        pauses = {"closed_loop": 0, "paced": args.pause_ms}  # each load: what its clients wait after an answer

        def load(phase: str) -> dict[str, dict[str, Any]]:
            """Both loads, one after the other."""
            results = {}
            for name, pause_ms in pauses.items():
                result = measure(target, prompts, [args.concurrency], args.duration, args.warmup, work, pause_ms)
                results[name] = result[f"c{args.concurrency}"]["gateway_routed"]
                console.print(f"{phase}, {name}: gateway p99 {results[name]['p99_ms']} ms")
            return results

        loads = {"before": load("before the writer")}
        log = DecisionLog(make_engine(database_url), work / "spill", max_buffer=10 * BACKLOG)
        writer = threading.Thread(target=asyncio.run, args=(write_all(log, traffic, args.rate, run),), name="writer")
        writer.start()
        while writer.is_alive() and (not run.samples or run.samples[-1][1] < min(args.records // 20, 50_000)):
            time.sleep(0.2)  # past its start
        load_started = time.monotonic()
        loads["with_writer"] = load("beside the writer")
        load_ended = time.monotonic()
        writer.join()
        loads["after"] = load("after the writer")
        other_work = watch.report()
        (t0, n0), (t1, n1) = run.written_at(load_started), run.written_at(load_ended)
        meanwhile = {"writer_records_per_s_meanwhile": round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None,
                     "writer_ran_throughout": run.finished is not None and run.finished >= load_ended}

        engine = make_engine(database_url)
        seed_feedback(engine, traffic.feedback)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE decisions, expert_calls, feedback"))
        queries = {f"{window.days}d": retrain_query(engine, datetime.now(UTC), window) for window in WINDOWS}
        with engine.connect() as conn:
            stored = {name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
                      for name in ("decisions", "expert_calls", "feedback")}
            size = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar_one()
        engine.dispose()

    writer_report = {**throughput(run, args.records), "offered_records_per_s": args.rate or "as fast as written",
                     "spilled_files": run.spilled_files,
                     "dead_letters": run.dead_letters, "batch": BATCH, "backlog": BACKLOG}
    report = {
        "command": command_line(),
        "smoke": args.smoke,
        "machine": machine(),
        "note": ("one machine: the writer (this process), PostgreSQL, the gateway, the upstream and wrk share its "
                 "cores, so the writer's CPU is taken from the gateway's; figures compare within this run"),
        "router": version,
        "settings": {
            "database": "a fresh PostgreSQL database on the local server, dropped after the run",
            "writer": "gateway/decisions/log.py DecisionLog (COPY per batch on PostgreSQL), fed from this process",
            "records": "3 virtual models on 2 routers; moe-auto (70%) keeps its text (a MMLU-Pro question, an "
                       "answer); 1 expert call, 2 after a fallback (5%); 2% errors; 5% explored; times over the "
                       f"{SPAN.days} days before the run",
            "feedback": "user thumbs on 5% of answered decisions, judge:general scores on 2%",
            "load": {"generator": f"{wrk_version()} (bench/wrk.lua)", "target": "moe-auto",
                     "closed_loop": "each client sends its next request as soon as an answer comes",
                     "paced": f"each client waits {args.pause_ms} ms on average after an answer (exponential)",
                     "concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup},
            "gateway": "moe serve, 1 worker, its own decision log in the same database",
        },
        "writer": writer_report,
        "target_records_per_s": {"limit": TARGET_RECORDS_PER_S, "whole_run": writer_report["records_per_s"],
                                 "slowest_minute": writer_report["slowest_whole_window_records_per_s"],
                                 "met": writer_report["records_per_s"] >= TARGET_RECORDS_PER_S
                                 and (writer_report["slowest_whole_window_records_per_s"] or 0) >= TARGET_RECORDS_PER_S},
        "gateway_load": {name: {phase: loads[phase][name] for phase in loads} for name in pauses},
        "writer_during_loads": meanwhile,
        "gateway_p99": {name: p99_check(loads["before"][name], loads["with_writer"][name], loads["after"][name])
                        for name in pauses},
        "retrain_query": queries,
        "stored": {**stored, "database_size": size},
        "other_work": other_work,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"writer: {args.records:,} records in {writer_report['seconds']} s = "
                  f"{writer_report['records_per_s']:,.0f} records/s (slowest minute "
                  f"{writer_report['slowest_whole_window_records_per_s']}), {writer_report['cpu_us_per_record']} us "
                  f"of this process's CPU each, {run.spilled_files} spilled files, {run.dead_letters} dead letters")
    console.print(f"gateway p99: {json.dumps(report['gateway_p99'])}")
    for name, query in queries.items():
        console.print(f"retrain query, last {name}: {query['rows']} rows in {query['read_median_s']} s (median of "
                      f"{len(query['read_s'])}), count {query['count_s']} s, indexes {query['indexes_used']}")
    console.print(f"other work on the machine: {json.dumps(other_work)}")
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
