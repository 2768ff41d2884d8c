"""What the gateway adds: the same fast local upstream called directly, through the floor, and through the gateway.

Each server runs in its own process: the scripted upstream (bench/upstream.py), the floor
(bench/floor_proxy.py: a bare Starlette + aiohttp pass-through, the least a Python proxy adds) and the
gateway (`moe serve`, one worker, routing with a trained router). One load generator (wrk, through
bench/harness.py) measures every target in the same run with the same queries (MMLU-Pro test
questions, so the router never sees the same text twice in a row), at each concurrency:

- direct: the upstream alone; also the load generator's ceiling, which must stay >= 5x every other row
  (`generator_ceiling` in the report);
- floor: through the bare pass-through proxy;
- gateway_routed: `moe-auto` (the router picks the expert); gateway_expert: the expert `general` by name.

The report gives each row's latency (p50/p90/p99/p99.9 over every request, with the sample count), the
requests/s that many clients sustain, the latency added over direct, and issue 13's checks against the
floor (at 1 client the routed request adds at most 3x the floor's p50; at 32 it sustains at least 0.5x
the floor's requests/s). Writes bench/results/overhead.json with the command that produced it.

    python -m bench.overhead [--duration 10] [--concurrency 1 32]
    python -m bench.overhead --quick             # a smoke run -> var/bench/overhead.smoke.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from bench.harness import (
    DEFAULT_ROUTER,
    MAX_TOKENS,
    REQUEST_TIMEOUT_S,
    ROOT,
    OtherWork,
    Processes,
    Target,
    added_over,
    command_line,
    console,
    floor_targets,
    gateway_config,
    generator_ceiling,
    machine,
    measure,
    print_checks,
    questions,
    router_version,
    start_floor,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
    wrk_version,
)

PROMPTS = 5000  # distinct bodies each target cycles through
SYSTEMS = ("floor", "gateway_routed", "gateway_expert")


def add_arguments(parser: argparse.ArgumentParser, name: str, levels: list[int]) -> None:
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of measured load per target and concurrency (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=levels, help="clients in flight")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s of load and 1 s of warm-up per point, written under var/bench/")
    parser.add_argument("--out", type=Path, help=f"report JSON; default bench/results/{name}.json, "
                        f"or var/bench/{name}.smoke.json with --quick")


def resolve(args: argparse.Namespace, name: str) -> Path:
    """Applies --quick; returns where the report goes."""
    if args.quick:
        args.duration, args.warmup = 2, 1
    return args.out or ROOT / (f"var/bench/{name}.smoke.json" if args.quick else f"bench/results/{name}.json")


def start_base(procs: Processes, router: Path, max_concurrency: int) -> tuple[str, dict[str, Target]]:
    """The upstream, the floor and the gateway; the upstream's /v1 URL and the targets on them."""
    upstream_v1 = start_upstream(procs)
    floor_v1 = start_floor(procs, upstream_v1)
    gateway = start_gateway(procs, gateway_config(upstream_v1, router, max_concurrency),
                            f"sqlite:///{procs.workdir}/decisions.db")
    return upstream_v1, {
        "direct": Target(f"{upstream_v1}/chat/completions", "echo-general"),
        "floor": Target(f"{floor_v1}/chat/completions", "echo-general"),
        "gateway_routed": Target(f"{gateway}/v1/chat/completions", "moe-auto"),
        "gateway_expert": Target(f"{gateway}/v1/chat/completions", "general"),
    }


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"generator": f"{wrk_version()} (bench/wrk.lua), closed loop: min(clients, cpus) threads, one "
                         "keep-alive connection per client", "duration_s": args.duration, "warmup_s": args.warmup,
            "prompts": f"{PROMPTS} MMLU-Pro test questions, each target's clients cycling through them",
            "max_tokens": MAX_TOKENS, "stream": False, "timeout_s": REQUEST_TIMEOUT_S,
            "percentiles": "numpy linear interpolation over every answered request (wrk's 1 us histogram)"}


def gateway_settings(max_concurrency: int) -> dict[str, Any]:
    return {
        "command": "moe serve (uvicorn, 1 worker)",
        "decision_log": "SQLite in the run's temporary folder (one record per request, batched off the request path)",
        "logging": "the gateway's defaults: one access line per chat request to stderr (a file here)",
        "api_keys": "off (default)",
        "redis": "off (no REDIS_URL: no response cache, in-process breakers)",
        "experts": f"3 on the upstream, called natively (one pooled aiohttp session), max_concurrency {max_concurrency} "
                   "(no bound below the load)",
        "router": "embedding (moe-auto)",
    }


FLOOR_SETTINGS = "bench/floor_proxy.py: Starlette on uvicorn (1 worker, no access log), one pooled aiohttp session"


def _fmt(value: float | str | None) -> str:
    return "-" if value is None else value if isinstance(value, str) else f"{value:.2f}"


def print_table(results: dict[str, Any], targets: list[str], systems: tuple[str, ...], title: str) -> None:
    table = Table("conc", "target", "p50", "p99", "+p50", "+p99", "req/s", "n", "err", box=box.SIMPLE_HEAD,
                  title=f"{title}, ms (+ = added over direct)")
    for level, row in results.items():
        for name in targets:
            r = row[name]
            added = (row["added_p50_ms"][name], row["added_p99_ms"][name]) if name in systems else ("", "")
            table.add_row(level, name, *(_fmt(v) for v in (r["p50_ms"], r["p99_ms"], *added)), f"{r['rps']:.0f}",
                          str(r["samples"]), str(r["errors"]))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "overhead", [1, 32])
    args = parser.parse_args()
    out = resolve(args, "overhead")
    version = router_version(args.router)
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    with Processes(work) as procs:
        _, targets = start_base(procs, args.router, max(args.concurrency))
        watch = OtherWork()
        watch.start()
        results = measure(targets, questions(PROMPTS), args.concurrency, args.duration, args.warmup, work)
        other_work = watch.report()
    added_over(results, SYSTEMS)
    ceiling, checks = generator_ceiling(results), floor_targets(results)

    report = {
        "command": command_line(),
        "smoke": args.quick,
        "machine": machine(),
        "note": "load generator and servers share the same cores; compare targets within one run",
        "router": version,
        "settings": {"load": load_settings(args), "upstream": "bench/upstream.py: echoes the prompt, one uvicorn process",
                     "floor": FLOOR_SETTINGS, "gateway": gateway_settings(max(args.concurrency))},
        "other_work": other_work,
        "generator_ceiling": ceiling,
        "targets": checks,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, list(targets), SYSTEMS, "gateway overhead" + (", smoke run" if args.quick else ""))
    print_checks(ceiling, checks)
    console.print(f"other work on the machine during the load: {json.dumps(other_work)}")
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
