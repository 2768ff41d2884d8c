"""What the gateway benchmarks share: prompts, the servers, and one load generator.

Every server (the fast scripted upstream, the gateway, a competitor) runs in its own process group
under `Processes`, which stops them all on exit, Ctrl-C and SIGTERM included. The load generator
runs in the benchmark's process with httpx: `closed_loop` keeps N requests in flight (latency and
the throughput N clients sustain), `open_loop` sends at a fixed rate whatever the answers do (a
soak), timing each request from when it was due so a stalled server cannot hide its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.upstream import free_port  # noqa: E402
from training.pool import load_pool  # noqa: E402

DEFAULT_ROUTER = ROOT / "var/routers/embedding-domain"
MAX_TOKENS = 16
REQUEST_TIMEOUT_S = 30.0
# The three echo experts every benchmark routes between, as (gateway name, upstream model, domains).
EXPERTS = (
    ("stem", "echo-stem", ["math", "physics", "chemistry", "engineering", "computer science"]),
    ("humanities", "echo-humanities", ["history", "philosophy", "law", "psychology"]),
    ("general", "echo-general", ["business", "economics", "health", "biology", "other"]),
)


def questions(n: int) -> list[str]:
    """MMLU-Pro test questions, so the router never sees the same text twice in a row."""
    texts = list(load_pool().of_split("test").questions)
    return [texts[i % len(texts)][:1000] for i in range(n)]


def router_version(artifact: Path) -> str:
    manifest = artifact / "router.json"
    if not manifest.is_file():
        raise SystemExit(f"no trained router at {artifact}: run `moe router train --out {artifact}` first")
    return json.loads(manifest.read_text())["version"]


def command_line() -> str:
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return "python " + shlex.join([str(script), *sys.argv[1:]])


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


# -- processes ------------------------------------------------------------------------------------
def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally` blocks (and `Processes`) still stop the servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


class Processes:
    """Servers started for one benchmark; each in its own process group, all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Output goes to `<workdir>/<name>.log`, read back when the server fails to come up."""
        with open(self.workdir / f"{name}.log", "wb") as log:
            # Own session: a terminal's Ctrl-C reaches only the benchmark, which then stops the whole
            # group, grandchildren included (a server's own workers).
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in self.started.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.started.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, sig)


def wait_http(url: str, proc: subprocess.Popen[bytes], procs: Processes, name: str, timeout_s: float = 180) -> None:
    """Until `url` answers 200; fails at once, with the server's log, if the server exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:500]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{name} did not come up at {url} within {timeout_s:.0f}s (last: {last}):\n{procs.log_tail(name)}")


def start_upstream(procs: Processes) -> str:
    """The scripted OpenAI-compatible upstream (echoes the prompt); returns its /v1 base URL."""
    port = free_port()
    proc = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)],
                       {**os.environ, "PYTHONPATH": str(ROOT)})
    v1 = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{v1}/models", proc, procs, "upstream")
    return v1


def gateway_config(upstream_v1: str, artifact: Path, max_concurrency: int | None = None) -> dict[str, Any]:
    """Three experts on the one upstream, and `moe-auto` routing between them."""
    bound = {"max_concurrency": max_concurrency} if max_concurrency else {}
    return {
        "experts": [{"name": name, "model": model, "api_base": upstream_v1, "domains": domains, **bound}
                    for name, model, domains in EXPERTS],
        "routers": [{"name": "embedding", "artifact": str(artifact)}],
        "virtual_models": [{"name": "moe-auto", "router": "embedding"}],
    }


def start_gateway(procs: Processes, config: dict[str, Any], database_url: str) -> str:
    """`moe serve` (one worker) after migrating `database_url`; returns its base URL once ready."""
    workdir = procs.workdir
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "MOE_CONFIG": str(workdir / "config.yaml"),
        "DATABASE_URL": database_url,
        "MOE_SPILL_DIR": str(workdir / "spill"),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    port = free_port()
    proc = procs.start("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", proc, procs, "gateway")
    return base


# -- load -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds into the run), how long it took from then, what went wrong."""

    due_s: float
    latency_ms: float
    stream: bool
    error: str | None  # None when a full answer came back


async def send(client: httpx.AsyncClient, url: str, model: str, prompt: str, stream: bool) -> str | None:
    """One chat completion read to its end; the error's kind, or None if a complete answer came back."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}
    try:
        if not stream:
            response = await client.post(url, json=body)
            if response.status_code != 200:
                return f"http_{response.status_code}"
            return None if response.json().get("choices") else "no_choices"
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return f"http_{response.status_code}"
            done = False
            async for line in response.aiter_lines():
                if line.startswith('data: {"error"'):
                    return "stream_error"
                done = done or line == "data: [DONE]"
            return None if done else "stream_unfinished"
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
        return type(exc).__name__


def summarise(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    latencies = sorted(s.latency_ms for s in samples)
    return {
        "requests": len(samples),
        "errors": sum(s.error is not None for s in samples),
        "error_kinds": dict(Counter(s.error for s in samples if s.error is not None)),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "rps": round(len(samples) / wall_s, 1),
    }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits)


async def closed_loop(
    url: str, model: str, prompts: Sequence[str], concurrency: int, on_done: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Every prompt once, by `concurrency` clients each sending its next request when its last returns."""
    samples: list[Sample] = []
    queue = iter(prompts)
    async with _client(concurrency) as client:
        run_started = time.perf_counter()

        async def worker() -> None:
            for prompt in queue:
                started = time.perf_counter()
                error = await send(client, url, model, prompt, stream=False)
                samples.append(Sample(started - run_started, (time.perf_counter() - started) * 1000, False, error))
                if on_done:
                    on_done()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - run_started
    return summarise(samples, wall)


def measure(
    targets: dict[str, tuple[str, str]], warmup: Sequence[str], measured: Sequence[str], levels: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Every target (name -> (url, model)) at every concurrency level, in one run: unmeasured warm-up
    requests, then the measured ones, closed loop. Keyed `c<level>`, then by target."""
    results: dict[str, dict[str, Any]] = {}
    with progress() as bar:
        for level in levels:
            row: dict[str, Any] = {}
            for name, (url, model) in targets.items():
                task = bar.add_task(f"c{level} {name}", total=len(measured))
                asyncio.run(closed_loop(url, model, warmup, level))
                row[name] = asyncio.run(closed_loop(url, model, measured, level, on_done=lambda t=task: bar.advance(t)))
            results[f"c{level}"] = row
    return results


async def open_loop(
    url: str,
    model: str,
    prompts: Sequence[str],
    rate: float,
    stream_fraction: float,
    on_sample: Callable[[Sample], None],
    seed: int = 0,
) -> None:
    """`len(prompts)` requests at `rate` per second, a seeded `stream_fraction` of them streamed.

    Each request's latency counts from when it was due, not from when the event loop got to it.
    Connections are not the bottleneck: up to 512 may be open, beyond the gateway's in-flight limit.
    """
    pick = random.Random(seed)
    async with _client(512) as client:
        run_started = time.perf_counter()

        async def one(due_s: float, prompt: str, stream: bool) -> None:
            await asyncio.sleep(max(0.0, run_started + due_s - time.perf_counter()))
            error = await send(client, url, model, prompt, stream)
            on_sample(Sample(due_s, (time.perf_counter() - run_started - due_s) * 1000, stream, error))

        await asyncio.gather(*(one(i / rate, p, pick.random() < stream_fraction) for i, p in enumerate(prompts)))

