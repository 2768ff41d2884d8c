"""Soak: the gateway, routing on, at a steady request rate for minutes, its decision log in PostgreSQL.

Requests go out at a fixed rate whatever the answers do (bench/open_loop.py; latency counts
from when each was due), a seeded mix of streamed and plain ones, to `moe-auto` in front of the fast
scripted upstream. Every `--sample-s` the gateway's resident memory (psutil, its process tree) and
the latency of the requests finished since the last sample are recorded. The decision log goes to
a fresh database on the real PostgreSQL server, made for the run and dropped after it; once the load
ends the script waits for the flush and checks there is one record per request sent.

Reported: errors by kind, p50/p99 (numpy, over every request, with the count), how late the load
generator (aiohttp, in this process) sent requests, RSS at the start, at minute 2 and at the end, RSS
growth from minute 2 to the end (from a fifth of the run when it is shorter than 4 minutes), records
vs requests, a plot of RSS and p99 over time, and the checks of issue 13: no errors, p99 <= 50 ms,
RSS growth under 10% from minute 2 to the end, one decision record per request.

    python -m bench.soak                 # 10 minutes at 10 req/s -> bench/results/soak.{json,png}
    python -m bench.soak --quick         # a 30 s smoke run -> var/bench/soak.smoke.{json,png}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import psutil
import psycopg
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.harness import (
    DEFAULT_ROUTER,
    MAX_TOKENS,
    ROOT,
    OtherWork,
    Processes,
    command_line,
    console,
    gateway_config,
    machine,
    questions,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
)
from bench.open_loop import Sample, open_loop, summarise

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

DEFAULT_POSTGRES = os.environ.get("MOE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FLUSH_TIMEOUT_S = 60.0
P99_LIMIT_MS = 50.0
RSS_GROWTH_LIMIT = 0.10  # of the RSS at the baseline (minute 2)


@contextmanager
def fresh_database(admin_url: str, prefix: str = "moe_soak") -> Iterator[str]:
    """A new database on the server at `admin_url`, named after the benchmark (`prefix`), dropped afterwards
    (whatever happened)."""
    admin = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def decision_counts(database_url: str) -> dict[str, int]:
    """Decision records in the log: all, and the streamed ones."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            total, streamed = conn.execute(text("SELECT count(*), count(*) FILTER (WHERE stream) FROM decisions")).one()
    finally:
        engine.dispose()
    return {"records": total, "streamed": streamed}


def wait_for_records(database_url: str, expected: int) -> tuple[dict[str, int], float]:
    """Polls until the log holds `expected` records (or FLUSH_TIMEOUT_S passes); returns the counts and the wait."""
    started = time.monotonic()
    while True:
        counts = decision_counts(database_url)
        waited = time.monotonic() - started
        if counts["records"] >= expected or waited > FLUSH_TIMEOUT_S:
            return counts, round(waited, 2)
        time.sleep(0.5)


def rss_mb(process: psutil.Process) -> float:
    """Resident memory of the gateway and any process it started."""
    tree = [process, *process.children(recursive=True)]
    return round(sum(p.memory_info().rss for p in tree) / 2**20, 1)


async def soak(
    url: str, prompts: list[str], rate: float, stream_fraction: float, sample_s: float, gateway: psutil.Process,
    advance: Callable[[Sample], None],
) -> tuple[list[Sample], list[dict[str, Any]], float]:
    """Runs the open loop while sampling RSS and window latency; returns samples, timeline and wall time."""
    samples: list[Sample] = []
    window: list[Sample] = []
    timeline: list[dict[str, Any]] = []
    started = time.perf_counter()

    def on_sample(sample: Sample) -> None:
        samples.append(sample)
        window.append(sample)
        advance(sample)

    def tick() -> None:
        latencies = [s.latency_ms for s in window]
        p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (None, None)
        timeline.append({
            "t_s": round(time.perf_counter() - started, 1),
            "rss_mb": rss_mb(gateway),
            "completed": len(window),
            "errors": sum(s.error is not None for s in window),
            "p50_ms": None if p50 is None else round(float(p50), 1),
            "p99_ms": None if p99 is None else round(float(p99), 1),
        })
        window.clear()

    load = asyncio.create_task(open_loop(url, "moe-auto", prompts, rate, stream_fraction, on_sample))
    tick()
    while not load.done():
        await asyncio.wait({load}, timeout=sample_s - (time.perf_counter() - started) % sample_s)
        tick()
    load.result()
    return samples, timeline, time.perf_counter() - started


def rss_summary(timeline: list[dict[str, Any]], baseline_s: float) -> dict[str, Any]:
    at_baseline = min(timeline, key=lambda row: abs(row["t_s"] - baseline_s))
    start, end = timeline[0], timeline[-1]
    minutes = max((end["t_s"] - at_baseline["t_s"]) / 60, 1e-9)
    growth = round(end["rss_mb"] - at_baseline["rss_mb"], 1)
    return {
        "start_mb": start["rss_mb"],
        "baseline_mb": at_baseline["rss_mb"],
        "baseline_t_s": at_baseline["t_s"],
        "end_mb": end["rss_mb"],
        "end_t_s": end["t_s"],
        "growth_baseline_to_end_mb": growth,
        "growth_share": round(growth / at_baseline["rss_mb"], 4),
        "growth_mb_per_min": round(growth / minutes, 2),
        "max_mb": max(row["rss_mb"] for row in timeline),
    }


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's soak checks, from the report's figures."""
    requests, rss, log = report["requests"], report["rss_mb"], report["decision_log"]
    return {
        "no_errors": {"errors": requests["errors"], "met": requests["errors"] == 0},
        "p99": {"p99_ms": requests["p99_ms"], "samples": requests["samples"], "limit_ms": P99_LIMIT_MS,
                "met": requests["p99_ms"] is not None and requests["p99_ms"] <= P99_LIMIT_MS},
        "rss_growth": {"from_s": rss["baseline_t_s"], "to_s": rss["end_t_s"], "growth_mb": rss["growth_baseline_to_end_mb"],
                       "share": rss["growth_share"], "limit_share": RSS_GROWTH_LIMIT,
                       "met": rss["growth_share"] < RSS_GROWTH_LIMIT},
        "records_equal_requests": {"records": log["records"], "requests": log["requests_sent"],
                                   "met": log["records_equal_requests"]},
    }


def plot(timeline: list[dict[str, Any]], baseline_s: float, path: Path, title: str) -> None:
    t = [row["t_s"] / 60 for row in timeline]
    fig, (rss, latency) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    rss.plot(t, [row["rss_mb"] for row in timeline], marker=".")
    rss.set_ylabel("gateway RSS (MB)")
    for key in ("p99_ms", "p50_ms"):
        latency.plot(t, [row[key] for row in timeline], marker=".", label=key.removesuffix("_ms"))
    latency.set_ylabel("latency of requests finished\nin each sample window (ms)")
    latency.set_xlabel("minutes into the run")
    latency.legend()
    for ax in (rss, latency):
        ax.axvline(baseline_s / 60, color="grey", linestyle=":", linewidth=1, label="RSS growth measured from here")
        ax.grid(alpha=0.3)
    rss.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long requests are sent")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="requests per second, steady (keep it below what the gateway sustains routed)")
    parser.add_argument("--stream-fraction", type=float, default=0.5, help="share of requests that stream")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS and latency samples")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="a PostgreSQL server URL whose user may create databases (default: $MOE_TEST_POSTGRES_URL "
                             "or the local server)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 0.5 minutes at 3 requests/s, sampled every 3 s, written under var/bench/")
    parser.add_argument("--out", type=Path, help="report JSON (the plot goes beside it as .png); "
                        "default bench/results/soak.json, or var/bench/soak.smoke.json with --quick")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.rate, args.sample_s = 0.5, 3.0, 3.0
    out: Path = args.out or (ROOT / ("var/bench/soak.smoke.json" if args.quick else "bench/results/soak.json"))
    duration_s = args.minutes * 60
    baseline_s = 120.0 if duration_s >= 240 else duration_s / 5
    version = router_version(args.router)
    stop_on_sigterm()

    prompts = questions(round(duration_s * args.rate))
    work = Path(tempfile.mkdtemp(prefix="moe-soak-"))
    with fresh_database(args.postgres) as database_url, Processes(work) as procs:
        upstream_v1 = start_upstream(procs)
        gateway = start_gateway(procs, gateway_config(upstream_v1, args.router), database_url)
        gateway_process = psutil.Process(procs.started["gateway"].pid)
        watch = OtherWork()
        watch.start()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("soak", total=len(prompts))
            errors: Counter[str] = Counter()

            def advance(sample: Sample) -> None:
                if sample.error:
                    errors[sample.error] += 1
                bar.update(task, advance=1, description=f"soak ({sum(errors.values())} errors)")

            samples, timeline, wall_s = asyncio.run(soak(
                f"{gateway}/v1/chat/completions", prompts, args.rate, args.stream_fraction, args.sample_s,
                gateway_process, advance,
            ))
        other_work = watch.report()
        console.print("load done; waiting for the decision log to flush")
        counts, flush_wait_s = wait_for_records(database_url, len(samples))
        database_name = make_url(database_url).database

    streamed = sum(s.stream for s in samples)
    requests = summarise(samples, wall_s)
    report = {
        "command": command_line(),
        "smoke": args.quick,
        "machine": machine(),
        "note": ("load generator (aiohttp, open loop), gateway and upstream share the same cores; latency counts from "
                 "when a request was due; requests.generator_late is how late the generator sent them"),
        "router": version,
        "settings": {
            "minutes": args.minutes, "rate_per_s": args.rate, "stream_fraction": args.stream_fraction,
            "sample_s": args.sample_s, "rss_baseline_s": baseline_s, "model": "moe-auto", "max_tokens": MAX_TOKENS,
            "gateway": "moe serve, 1 worker, defaults otherwise (decision log flushed every 0.25 s)",
            "database": f"fresh PostgreSQL database {database_name} (dropped after the run)",
        },
        "requests": {**requests, "streamed": streamed, "errors_by_kind": dict(errors)},
        "decision_log": {
            "requests_sent": len(samples),
            "records": counts["records"],
            "streamed_records": counts["streamed"],
            "records_equal_requests": counts["records"] == len(samples) and counts["streamed"] == streamed,
            "flush_wait_s": flush_wait_s,
        },
        "other_work": other_work,
        "rss_mb": rss_summary(timeline, baseline_s),
        "timeline": timeline,
    }
    report["targets"] = targets(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(timeline, baseline_s, out.with_suffix(".png"),
         f"soak: moe-auto at {args.rate:g} req/s for {args.minutes:g} min" + (" (smoke run)" if args.quick else ""))

    rss, log = report["rss_mb"], report["decision_log"]
    console.print(
        f"{requests['requests']} requests ({streamed} streamed), {requests['errors']} errors {dict(errors)}, "
        f"p50 {requests['p50_ms']:.1f} ms, p99 {requests['p99_ms']:.1f} ms over {requests['samples']} requests; "
        f"the generator sent them late by p99 {requests['generator_late']['p99']:.2f} ms\n"
        f"RSS start {rss['start_mb']} MB, at {rss['baseline_t_s']:.0f} s {rss['baseline_mb']} MB, end {rss['end_mb']} MB "
        f"(growth {rss['growth_baseline_to_end_mb']} MB, {rss['growth_mb_per_min']} MB/min)\n"
        f"decision records {log['records']} for {log['requests_sent']} requests "
        f"({'equal' if log['records_equal_requests'] else 'NOT equal'}; flushed within {flush_wait_s} s)"
    )
    console.print(f"other work on the machine during the load: {json.dumps(other_work)}")
    for name, check in report["targets"].items():
        console.print(f"[{'green' if check['met'] else 'bold red'}]{name}: {json.dumps(check)}[/]")
    console.print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
