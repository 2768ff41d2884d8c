"""What the gateway adds: the same fast local upstream called directly and through the gateway.

Each server runs in its own process; one load generator (bench/harness.py) measures every target
in the same run with the same queries (MMLU-Pro test questions, so the router never sees the same
text twice in a row), at each concurrency. Writes bench/results/overhead.json with the command that
produced it.

    python bench/overhead.py [--requests 400] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import (
    DEFAULT_ROUTER,
    ROOT,
    Processes,
    command_line,
    gateway_config,
    machine,
    measure,
    questions,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
)
from rich.console import Console
from rich.table import Table

console = Console()
WARMUP = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/overhead.json")
    args = parser.parse_args()
    version = router_version(args.router)
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    prompts = questions(WARMUP + args.requests)
    with Processes(work) as procs:
        upstream_v1 = start_upstream(procs)
        gateway = start_gateway(procs, gateway_config(upstream_v1, args.router), f"sqlite:///{work}/bench.db")
        targets = {
            "direct": (f"{upstream_v1}/chat/completions", "echo-general"),
            "gateway_routed": (f"{gateway}/v1/chat/completions", "moe-auto"),
            "gateway_expert": (f"{gateway}/v1/chat/completions", "general"),
        }
        results = measure(targets, prompts[:WARMUP], prompts[WARMUP:], args.concurrency)
        for row in results.values():
            for name in ("gateway_routed", "gateway_expert"):
                row[f"{name}_added_p50_ms"] = round(row[name]["p50_ms"] - row["direct"]["p50_ms"], 3)
                row[f"{name}_added_p99_ms"] = round(row[name]["p99_ms"] - row["direct"]["p99_ms"], 3)

    report = {
        "command": command_line(),
        "machine": machine(),
        "note": "load generator, gateway and upstream share the same cores; compare targets within one run",
        "router": version,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("concurrency", "target", "p50 ms", "p99 ms", "req/s", "errors", title="gateway overhead")
    for conc, row in results.items():
        for name in targets:
            r = row[name]
            table.add_row(conc, name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['rps']:.0f}", str(r["errors"]))
        table.add_row(
            conc,
            "added p50 (routed / expert)",
            f"{row['gateway_routed_added_p50_ms']:.2f} / {row['gateway_expert_added_p50_ms']:.2f}",
            "",
            "",
            "",
        )
    console.print(table)
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
