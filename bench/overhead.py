"""What the gateway adds: the same fast local upstream called directly and through the gateway.

Each server runs in its own process; one load generator measures every target in the same run
with the same queries (MMLU-Pro test questions, so the router never sees the same text twice in a
row), at each concurrency. Writes bench/results/overhead.json with the command that produced it.

    python bench/overhead.py [--requests 400] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.upstream import free_port  # noqa: E402
from training.pool import load_pool  # noqa: E402

console = Console()
ARTIFACT = ROOT / "var/routers/embedding-domain"


def questions(n: int) -> list[str]:
    pool = load_pool()
    texts = list(pool.of_split("test").questions)
    return [texts[i % len(texts)][:1000] for i in range(n)]


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def run_load(url: str, model: str, prompts: list[str], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue = iter(prompts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for prompt in queue:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
                started = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "rps": round(len(latencies) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/overhead.json")
    args = parser.parse_args()
    if not (ARTIFACT / "router.json").is_file():
        raise SystemExit(f"no trained router at {ARTIFACT}: run `moe router train` first")

    work = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    upstream_port, gateway_port = free_port(), free_port()
    upstream_v1 = f"http://127.0.0.1:{upstream_port}/v1"
    config = {
        "experts": [
            {
                "name": "stem",
                "model": "echo-stem",
                "api_base": upstream_v1,
                "domains": ["math", "physics", "chemistry", "engineering", "computer science"],
            },
            {
                "name": "humanities",
                "model": "echo-humanities",
                "api_base": upstream_v1,
                "domains": ["history", "philosophy", "law", "psychology"],
            },
            {
                "name": "general",
                "model": "echo-general",
                "api_base": upstream_v1,
                "domains": ["business", "economics", "health", "biology", "other"],
            },
        ],
        "routers": [{"name": "embedding", "artifact": str(ARTIFACT)}],
        "virtual_models": [{"name": "moe-auto", "router": "embedding"}],
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "MOE_CONFIG": str(work / "config.yaml"),
        "DATABASE_URL": f"sqlite:///{work}/bench.db",
        "MOE_SPILL_DIR": str(work / "spill"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.upstream", "--port", str(upstream_port)], env=env, cwd=ROOT),
        subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(gateway_port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "gateway.log", "w"),  # noqa: SIM115 - the child owns it until it exits
        ),
    ]
    try:
        wait_http(f"{upstream_v1}/models")
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz")
        gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        targets = {
            "direct": (f"{upstream_v1}/chat/completions", "echo-general"),
            "gateway_routed": (gateway, "moe-auto"),
            "gateway_expert": (gateway, "general"),
        }
        prompts = questions(args.requests)
        results: dict[str, Any] = {}
        for concurrency in args.concurrency:
            for name, (url, model) in targets.items():
                asyncio.run(run_load(url, model, prompts[:50], concurrency))  # warm-up
                results.setdefault(f"c{concurrency}", {})[name] = asyncio.run(
                    run_load(url, model, prompts, concurrency)
                )
            row = results[f"c{concurrency}"]
            for name in ("gateway_routed", "gateway_expert"):
                row[f"{name}_added_p50_ms"] = round(row[name]["p50_ms"] - row["direct"]["p50_ms"], 3)
                row[f"{name}_added_p99_ms"] = round(row[name]["p99_ms"] - row["direct"]["p99_ms"], 3)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

    report = {
        "command": "python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "load generator, gateway and upstream share the same cores; compare targets within one run",
        "router": json.loads((ARTIFACT / "router.json").read_text())["version"],
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
