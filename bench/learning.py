"""The retraining loop's learning claim, measured through the real gateway, with the MMLU-Pro pool as the simulator.

1. A router of the retraining family (`moe router retrain`'s default, reward-distilled) is trained with full
   information on 300 train questions (`moe router train --data`), registered and promoted as the active version.
   Every router trained here tunes on the pool's whole dev split with full information: with 300 dev questions,
   routers trained with full information on 300 to 6,300 questions scored AUCs that went up and down by as much
   as the gap being measured (0.5375, 0.5374, 0.5391, 0.5304, 0.5435; 0.5372 to 0.5510 with the whole split).
2. `moe serve` routes a virtual model with exploration on between the pool's seven models, served by the scripted
   upstream, logging every decision (and, with MOE_LOG_PROMPTS, its prompt) to a fresh PostgreSQL database.
3. Other train questions go through it; the client rates each answer with the answering expert's recorded
   correctness (`POST /v1/feedback`): only the chosen expert's outcome is ever revealed, as with real users.
4. At each checkpoint (requests logged so far) `moe router retrain` trains a candidate from the log up to then, the
   starting questions mixed in, and values it off-policy on held-out records (train questions: the test split is
   never sent); a router of the same family is trained with full information on the same questions; all are
   replayed on the pool's test split by training/evaluate.py (the area under the cost-quality curve, the accuracy
   of each router's top choice, which the off-policy estimate is compared with).
   recovery = (AUC retrained - AUC start) / (AUC full information - AUC start).
5. The last candidate goes through `moe router gate --promote` (bench/learning_gate.json) while clients keep
   sending requests: the router header must change with no request failing. A candidate the gate refuses is then
   promoted by hand, and the report says so: the switch tests the hot reload, not the candidate.

Targets (issue 15): recovery >= 0.5 at the last checkpoint; the off-policy (doubly robust) estimate of the last
candidate's accuracy within 0.03 of its top choice's measured test accuracy; the new version served with no failed
request during the switch.

    python -m bench.learning            # 300 starting questions, 6,000 logged -> bench/results/learning.{json,png}
    python -m bench.learning --smoke    # 250 and 500 logged -> var/bench/learning.smoke.{json,png}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.harness import (
    MAX_TOKENS,
    ROOT,
    OtherWork,
    Processes,
    command_line,
    console,
    machine,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
)
from bench.learning_client import FEEDBACK_SOURCE, Exchange, send_and_rate, traffic_through
from bench.learning_data import Plan, Rewards, plan, write_jsonl
from bench.learning_report import measure, plot, summary, targets
from bench.soak import DEFAULT_POSTGRES, fresh_database, wait_for_records
from routers import Manifest
from training.gate import load_profile, run_gate
from training.log_data import split_of
from training.pool import Pool, load_pool

ROUTER = "learned"  # the config's router name
MODEL = "moe-learn"  # the virtual model the client asks
FAMILY = "reward-distilled"  # moe router retrain's default: learns each expert's reward from the answers it gave
CHECKPOINTS = (500, 1000, 2000, 4000, 6000)
GATE_PROFILE = Path(__file__).with_name("learning_gate.json")
# The base data may make up to 95% of a retrain's rows, per split: all 300 starting questions go into every retrain,
# as into the full-information routers, and of the dev split 19 times the log's dev rows (all of it from ~800 logged).
BASE_SHARE = 0.95
POLL_S = 1.0  # MOE_ROUTER_POLL_S: how soon each replica sees a promotion


def moe(*args: str, database_url: str | None = None, log: Path) -> subprocess.CompletedProcess[str]:
    """The `moe` CLI from the repository root; its output appended to `log`. Does not raise on a nonzero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"DATABASE_URL": database_url} if database_url else {})}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    with log.open("a") as out:
        out.write(f"$ moe {' '.join(args)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n\n")
    return done


def checked(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args[2:])} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def gateway_config(pool: Pool, upstream_v1: str, artifact: Path, epsilon: float) -> dict[str, Any]:
    """The pool's seven models as experts on the scripted upstream, at the pool's prices; one exploring virtual
    model, routed by the starting router without a cost knob (each request to the expert of best predicted
    quality, unless it explores)."""
    return {
        "experts": [{"name": name, "model": name, "api_base": upstream_v1, "price_per_mtok": float(price)}
                    for name, price in zip(pool.models, pool.prices, strict=True)],
        "routers": [{"name": ROUTER, "artifact": str(artifact), "family": FAMILY}],
        "virtual_models": [{"name": MODEL, "router": ROUTER,
                            "exploration": {"epsilon": epsilon, "distribution": "uniform"}}],
    }


def train_full(pool: Pool, layout: Plan, logged: int, work: Path, log: Path) -> Path:
    """The same family trained with every expert's reward known, on the starting and the first `logged` questions."""
    data = write_jsonl(work / f"full-{logged}.jsonl", pool,
                       [(layout.start, "train"), (layout.stream[:logged], "train"), (layout.dev, "dev")])
    out = work / f"full-{logged}"
    checked(moe("router", "train", "--family", FAMILY, "--data", str(data), "--out", str(out), log=log))
    return out


def send(base: str, pool: Pool, rows: list[int], concurrency: int, bar: Progress) -> tuple[list[Exchange], float]:
    task = bar.add_task(f"sending {len(rows)} questions", total=len(rows))
    errors: Counter[str] = Counter()

    def done(exchange: Exchange) -> None:
        if exchange.error:
            errors[exchange.error] += 1
        bar.update(task, advance=1, description=f"sending {len(rows)} questions ({sum(errors.values())} errors)")

    started = time.perf_counter()
    exchanges = asyncio.run(send_and_rate(base, MODEL, rows, lambda row: str(pool.prompts[row]), Rewards(pool),
                                          concurrency, done))
    return exchanges, time.perf_counter() - started


def retrain(database_url: str, work: Path, start_data: Path, logged: int, until: datetime, holdout: float, *,
            register: bool, log: Path) -> Manifest:
    """`moe router retrain` on the log up to `until`, the starting questions mixed in."""
    out = work / f"retrained-{logged}"
    checked(moe("router", "retrain", "--router", ROUTER, "--out", str(out), "--config", str(work / "config.yaml"),
                "--family", FAMILY, "--until", until.isoformat(), "--feedback-source", FEEDBACK_SOURCE,
                "--base-data", str(start_data), "--base-share", str(BASE_SHARE), "--holdout", str(holdout),
                *([] if register else ["--no-register"]), database_url=database_url, log=log))
    return Manifest.read(out)


def version_id(database_url: str, version: str) -> int:
    from sqlalchemy import create_engine

    from migrations.router_versions import RouterVersions

    engine = create_engine(database_url)
    try:
        return next(info.id for info in RouterVersions(engine).list(ROUTER) if info.version == version)
    finally:
        engine.dispose()


def switch(base: str, pool: Pool, database_url: str, candidate: Manifest, profile: Path, concurrency: int,
           log: Path) -> dict[str, Any]:
    """`moe router gate --promote` on the candidate while `concurrency` clients send test questions back to back.
    A candidate the gate refuses is then promoted with `moe router promote`, so that the switch is measured whatever
    the gate said (`promoted_through_the_gate` tells which): it tests the hot reload, not the candidate."""
    new_id = version_id(database_url, candidate.version)
    prompts = [str(p) for p in pool.prompts[pool.mask("test")][:2000]]
    gate: list[subprocess.CompletedProcess[str]] = []

    def promote() -> None:
        gate.append(moe("router", "gate", "--router", ROUTER, "--version", str(new_id), "--profile", str(profile),
                        "--promote", database_url=database_url, log=log))
        if gate[0].returncode != 0:
            checked(moe("router", "promote", str(new_id), database_url=database_url, log=log))

    served = f"{candidate.name}@{candidate.version}"  # x-moe-router: the decision's router name and version
    observed, promoted_s = asyncio.run(traffic_through(
        base, MODEL, prompts, concurrency, lambda: asyncio.to_thread(promote), served,
        lead_s=5.0, settle_s=5.0, timeout_s=60.0))
    console.print(gate[0].stdout)
    first_new = next((o.sent_s for o in observed if o.router == served), None)
    return {
        "gate": {"passed": gate[0].returncode == 0, "version": candidate.version,
                 "description": load_profile(profile).description, "checks": gate_checks(profile, candidate)},
        "switch": {
            "promoted_through_the_gate": gate[0].returncode == 0,
            "requests": len(observed),
            "failed": sum(o.error is not None for o in observed),
            "error_kinds": dict(Counter(o.error for o in observed if o.error)),
            "routers_seen": dict(Counter(o.router or "none" for o in observed)),
            "promotion_started_at_s": promoted_s,
            "first_new_version_at_s": first_new,
            "new_version_after_promotion_started_s": None if first_new is None else round(first_new - promoted_s, 3),
            "old_version_after_first_new": sum(1 for o in observed if first_new is not None and o.sent_s > first_new
                                               and o.router != served),
            "version_id": new_id,
        },
    }


def gate_checks(profile: Path, candidate: Manifest) -> list[dict[str, Any]]:
    """Each check of the gate with the candidate's value, as `moe router gate` judged them."""
    return [{"metric": o.check.metric, "value": o.value, "threshold": o.threshold, "passed": o.passed}
            for o in run_gate(load_profile(profile), candidate.metrics)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=300, help="train questions the starting router learns from")
    parser.add_argument("--dev", type=int, help="dev questions every router here tunes on (default: the whole dev "
                        "split; with 300 the full-information routers' AUC moved by more than the gap measured)")
    parser.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)),
                        help="requests logged at each retrain, comma-separated; the last is how many are sent")
    parser.add_argument("--epsilon", type=float, default=0.3,
                        help="exploration: share of requests sent to another expert, drawn evenly")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the log held out for the off-policy value")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight while sending")
    parser.add_argument("--gate-profile", type=Path, default=GATE_PROFILE,
                        help="the gate the last candidate must pass to be promoted")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="a PostgreSQL server URL whose user may create databases (default: $MOE_TEST_POSTGRES_URL "
                             "or the local server); the benchmark's database is made and dropped on it")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run: 100 starting questions, 300 dev, 250 and 500 logged, under var/bench/")
    parser.add_argument("--out", type=Path, help="report JSON (the plot goes beside it as .png); "
                        "default bench/results/learning.json, or var/bench/learning.smoke.json with --smoke")
    args = parser.parse_args()
    if args.smoke:
        args.start, args.dev, args.checkpoints = 100, 300, "250,500"
    try:
        checkpoints = sorted({int(n) for n in args.checkpoints.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--checkpoints: whole numbers separated by commas, not {args.checkpoints!r}")
    if not checkpoints or checkpoints[0] <= 0:
        parser.error("--checkpoints: at least one positive number of requests")
    try:
        load_profile(args.gate_profile)
    except ValueError as exc:
        parser.error(f"--gate-profile: {exc}")
    if args.start < 1 or (args.dev is not None and args.dev < 1) or args.concurrency < 1:
        parser.error("--start, --dev and --concurrency: at least 1")
    if not 0 < args.holdout < 1:
        parser.error("--holdout: a share above 0 and below 1")
    if not 0 < args.epsilon < 1:
        parser.error("--epsilon: above 0 (the log must hold other experts' answers) and below 1")
    out: Path = args.out or (ROOT / ("var/bench/learning.smoke.json" if args.smoke else "bench/results/learning.json"))
    stop_on_sigterm()

    pool = load_pool()
    layout = plan(pool, args.start, checkpoints[-1], args.dev)
    work = Path(tempfile.mkdtemp(prefix="moe-learning-"))
    log = work / "moe.log"
    console.print(f"working in {work}; every moe command's output is in {log}")
    start_data = write_jsonl(work / "start.jsonl", pool, [(layout.start, "train"), (layout.dev, "dev")])
    checked(moe("router", "train", "--family", FAMILY, "--data", str(start_data), "--out", str(work / "start"),
                log=log))
    start = Manifest.read(work / "start")
    console.print(f"starting router {start.family} {start.version}, trained on {args.start} questions")

    with fresh_database(args.postgres, "moe_learning") as database_url, Processes(work) as procs:
        checked(moe("db", "upgrade", database_url=database_url, log=log))
        checked(moe("router", "register", ROUTER, str(work / "start"), database_url=database_url, log=log))
        checked(moe("router", "promote", str(version_id(database_url, start.version)), database_url=database_url,
                    log=log))
        upstream_v1 = start_upstream(procs)
        # start_gateway passes this process's environment on: prompt storage, a quick reload, versions in `work`.
        os.environ.update({"MOE_LOG_PROMPTS": "true", "MOE_ROUTER_POLL_S": str(POLL_S),
                           "MOE_ROUTER_VERSIONS_DIR": str(work / "versions")})
        base = start_gateway(procs, gateway_config(pool, upstream_v1, work / "start", args.epsilon), database_url)
        watch = OtherWork()
        watch.start()
        exchanges: list[Exchange] = []
        boundaries: dict[int, datetime] = {}
        send_s = 0.0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            for logged in checkpoints:
                batch, took = send(base, pool, layout.stream[len(exchanges):logged].tolist(), args.concurrency, bar)
                exchanges += batch
                send_s += took
                counts, _ = wait_for_records(database_url, len(exchanges))
                if counts["records"] < len(exchanges):
                    raise RuntimeError(f"the decision log holds {counts['records']} of {len(exchanges)} decisions "
                                       "after waiting for it: a retrain's window would miss some")
                boundaries[logged] = datetime.now(UTC)  # after every decision so far, before any later one
        console.print(f"{len(exchanges)} requests in {send_s:.0f} s, "
                      f"{sum(e.error is not None for e in exchanges)} failed; retraining at {checkpoints}")

        retrained: dict[int, Manifest] = {}
        for logged in checkpoints:
            retrained[logged] = retrain(database_url, work, start_data, logged, boundaries[logged], args.holdout,
                                        register=logged == checkpoints[-1], log=log)
            console.print(f"retrained on {logged} logged requests: {retrained[logged].version}")
        full = {logged: train_full(pool, layout, logged, work, log) for logged in checkpoints}
        promotion = switch(base, pool, database_url, retrained[checkpoints[-1]], args.gate_profile,
                           args.concurrency, log)
        other_work = watch.report()

    # The records each retrain held out to value its candidate (training/log_data.py splits by decision id).
    held_out = {n: np.array([e.row for e in exchanges[:n]
                             if e.decision_id and split_of(e.decision_id, args.holdout) == "holdout"], dtype=np.int64)
                for n in checkpoints}
    measured = measure(pool, work / "start", {n: work / f"retrained-{n}" for n in checkpoints}, full, retrained,
                       held_out)
    report = {
        "command": command_line(),
        "smoke": args.smoke,
        "machine": machine(),
        "settings": {
            "family": FAMILY, **layout.to_json(), "checkpoints": checkpoints,
            "exploration": {"epsilon": args.epsilon, "distribution": "uniform"}, "cost_knob": None,
            "holdout": args.holdout, "base_share": BASE_SHARE, "concurrency": args.concurrency,
            "max_tokens": MAX_TOKENS, "feedback_source": FEEDBACK_SOURCE,
            "gateway": f"moe serve, 1 worker, MOE_LOG_PROMPTS=true, MOE_ROUTER_POLL_S={POLL_S:g}, decision log in a "
                       "fresh PostgreSQL database (dropped after the run), experts on bench.upstream",
            "feedback": "the pool's recorded correctness of the expert that answered (x-moe-expert)",
            "test_split": "the pool's test split (2,412 questions), replayed by training/evaluate.py",
        },
        "start_router": start.version,
        "traffic": summary(exchanges, send_s),
        **measured,
        **promotion,
        "other_work": other_work,
    }
    report["targets"] = targets(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    for name, check in report["targets"].items():
        console.print(f"[{'green' if check['met'] else 'bold red'}]{name}: {json.dumps(check)}[/]")
    console.print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
