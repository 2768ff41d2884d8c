"""Hostile request bodies: does a 4 MB body of the worst shape stall the gateway or grow its memory?

A prober in a process of its own asks the gateway's /healthz back to back and records each latency,
first alone (the prober's own floor: what /healthz takes when nothing else happens), then while the
benchmark sends each body shape just under the 4 MiB body limit, `--repeats` times in a row. Reported
per shape: the status codes the bodies got, how long they took, /healthz p50/p99/max while they were
sent (the event loop blocked shows as a long /healthz), and the resident memory of the gateway's own
process before the first and after the last body (the body reader's worker process separately).

    python -m bench.hostile_bodies          # -> bench/results/hostile_bodies.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console

from bench.harness import (
    DEFAULT_ROUTER,
    ROOT,
    Processes,
    command_line,
    gateway_config,
    latency_stats,
    machine,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
)

console = Console()
LIMIT = 4 * 1024 * 1024  # the gateway's default MOE_MAX_BODY_BYTES
PROBE_IDLE_S = 3.0


def _fill(make: Callable[[int], Any], unit_bytes: int) -> bytes:
    """The largest body `make(n)` under LIMIT, n found from one JSON unit's size."""
    n = (LIMIT - 200) // unit_bytes
    while len(body := json.dumps(make(n), separators=(",", ":")).encode()) > LIMIT:
        n = int(n * 0.98)
    return body


def _deep(depth: int) -> bytes:
    return b'{"model":"moe-auto","messages":[{"role":"user","content":"x"}],"tool_choice":' + \
        b"[" * depth + b"]" * depth + b"}"


def shapes() -> dict[str, bytes]:
    """Each body just under 4 MiB. Refused ones are refused for their shape, answered ones are valid requests."""
    user = {"role": "user", "content": ""}

    def base(**fields: Any) -> dict[str, Any]:
        return {"model": "moe-auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields}

    return {
        "100k_empty_messages": _fill(lambda n: base(messages=[user] * n), 29),
        "4096_messages_of_1kb": json.dumps(base(messages=[{"role": "user", "content": "word " * 190}] * 4096)).encode(),
        "one_4mb_message": _fill(lambda n: base(messages=[{"role": "user", "content": "lorem ipsum " * n}]), 12),
        "tool_schema_of_300k_keys": _fill(
            lambda n: base(tools=[{"type": "function", "function": {"name": "f",
                                                                     "parameters": {str(i): 0 for i in range(n)}}}]),
            11),
        "2m_zeros_in_a_list": _fill(lambda n: base(stop=[0] * n), 2),
        "logit_bias_of_300k_entries": _fill(lambda n: base(logit_bias={str(i): 1 for i in range(n)}), 11),
        "nesting_2m_deep": _deep((LIMIT - 200) // 2),
    }


def probe(url: str, stop: Any, out: Connection) -> None:
    """/healthz back to back until `stop` is set; sends [(started, latency_ms)] through `out`."""
    samples: list[tuple[float, float]] = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.time()
            tick = time.perf_counter()
            client.get(url).raise_for_status()
            samples.append((started, (time.perf_counter() - tick) * 1000))
    out.send(samples)


def probed(url: str, work: Callable[[], None]) -> list[float]:
    """/healthz latencies, from a process of its own, of the probes sent while `work` ran."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    prober = context.Process(target=probe, args=(url, stop, send), daemon=True)
    prober.start()
    time.sleep(1.0)  # the prober's own start-up
    began = time.time()
    work()
    stop.set()
    samples = receive.recv()
    prober.join()
    return [latency for started, latency in samples if started >= began]


def summary(latencies: list[float]) -> dict[str, float]:
    stats = latency_stats(latencies)
    return {"n": stats["samples"], **{k: round(stats[k], 2) for k in ("p50_ms", "p99_ms", "max_ms")}}


def rss_mb(pid: int) -> dict[str, float]:
    """The gateway process's resident memory, and its children's (the body reader's worker)."""
    process = psutil.Process(pid)
    children = sum(c.memory_info().rss for c in process.children(recursive=True))
    return {"gateway": round(process.memory_info().rss / 2**20, 1), "children": round(children / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="bodies of each shape, sent one after another")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--only", nargs="+", metavar="SHAPE", help="send only these shapes (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile_bodies.json")
    args = parser.parse_args()
    stop_on_sigterm()
    version = router_version(args.router)
    bodies = {name: body for name, body in shapes().items() if not args.only or name in args.only}
    work = Path(tempfile.mkdtemp(prefix="moe-hostile-"))
    with Processes(work) as procs:
        upstream_v1 = start_upstream(procs)
        gateway = start_gateway(procs, gateway_config(upstream_v1, args.router), f"sqlite:///{work}/decisions.db")
        pid = procs.started["gateway"].pid
        with httpx.Client(timeout=120) as client:
            # Warm: one small request routed and answered, one large body (which starts the body reader's worker).
            for body in (json.dumps({"model": "moe-auto", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                         shapes()["one_4mb_message"]):
                client.post(f"{gateway}/v1/chat/completions", content=body).raise_for_status()
            results: dict[str, Any] = {}
            idle = probed(f"{gateway}/healthz", lambda: time.sleep(PROBE_IDLE_S))
            console.print(f"prober alone: {summary(idle)}")
            for name, body in bodies.items():
                statuses: Counter[int] = Counter()
                took: list[float] = []
                before = rss_mb(pid)
                after: list[dict[str, float]] = []

                def send_all(body: bytes = body, statuses: Counter[int] = statuses, took: list[float] = took,
                             after: list[dict[str, float]] = after) -> None:
                    for _ in range(args.repeats):
                        tick = time.perf_counter()
                        response = client.post(f"{gateway}/v1/chat/completions", content=body,
                                               headers={"content-type": "application/json"})
                        took.append((time.perf_counter() - tick) * 1000)
                        statuses[response.status_code] += 1
                        after.append(rss_mb(pid))

                healthz = probed(f"{gateway}/healthz", send_all)
                results[name] = {
                    "body_bytes": len(body),
                    "statuses": {str(k): v for k, v in sorted(statuses.items())},
                    "request_ms": {"p50": round(statistics.median(took), 1), "max": round(max(took), 1)},
                    "healthz_while_sent": summary(healthz),
                    "rss_mb": {"before": before, "after_first": after[0], "after_last": after[-1],
                               "gateway_after_each": [r["gateway"] for r in after]},
                }
                console.print(name, json.dumps(results[name]))
    report = {
        "command": command_line(),
        "machine": machine(),
        "note": "prober, load, gateway and upstream share the machine's cores; /healthz is timed by a process of its own",
        "router": version,
        "settings": {"repeats": args.repeats, "body_limit_bytes": LIMIT, "gateway": "moe serve, 1 worker, defaults",
                     "shapes": list(bodies)},
        "healthz_idle": summary(idle),
        "shapes": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
