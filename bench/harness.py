"""What the benchmarks share: the pool scenarios, prompts, the servers, and the load generators.

Every server (the fast scripted upstream, the floor proxy, the gateway, a competitor) runs in its own
process group under `Processes`, which stops them all on exit, Ctrl-C and SIGTERM included.

Two load generators, neither of them the bottleneck:
- `measure` (closed loop: N clients, each sending its next request when its last returns; latency and
  the throughput N clients sustain) runs wrk (Debian's `wrk` package), a native event-loop client
  whose ceiling is far above any Python server here (the echo upstream alone is the `direct` row's
  limit, thousands of req/s), where the httpx client this replaced topped out near 450 req/s and
  burned a core the servers needed. `wrk.lua` sends the prompts' bodies in turn, checks
  every answer and hands back the whole latency histogram (1 us buckets). Every run has a `direct`
  row, the upstream without anything in front: the generator's ceiling, reported with the ratio to
  the fastest other target (`generator_ceiling`), which should stay at 5x or more.
- `bench.open_loop` (a fixed request rate whatever the answers do: a soak) runs aiohttp in the
  benchmark's process; each request is timed from when it was due, so neither a stalled server nor
  a late generator hides a queue, and how late the generator started each one is reported apart.

Percentiles are numpy's (linear interpolation between the closest ranks) over every sample, with
the sample count beside them: the p99 of 100 samples is not their maximum.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from rich.console import Console

from bench.upstream import free_port
from training.pool import load_pool

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROUTER = ROOT / "var/routers/embedding-domain"
MAX_TOKENS = 16
REQUEST_TIMEOUT_S = 30.0
# The three echo experts every gateway benchmark routes between, as (gateway name, upstream model, domains).
EXPERTS = (
    ("stem", "echo-stem", ["math", "physics", "chemistry", "engineering", "computer science"]),
    ("humanities", "echo-humanities", ["history", "philosophy", "law", "psychology"]),
    ("general", "echo-general", ["business", "economics", "health", "biology", "other"]),
)
# The pool scenarios of the offline benchmarks (routing, aggregation): pool model columns, None for all seven.
SMALL_EXPERTS = ("Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "Phi-3-mini-4k-instruct")
BEST_SINGLE = "Meta-Llama-3_1-70B-Instruct"
POOL_SCENARIOS: dict[str, tuple[str, ...] | None] = {"small": SMALL_EXPERTS, "all": None}
# The generator must sustain this many times what the fastest target behind a proxy does (`generator_ceiling`).
CEILING_FACTOR = 5.0

console = Console(width=None if sys.stdout.isatty() else 140)  # a log file gets whole table rows


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
    """How this benchmark was run, as a reader reruns it from the repository root: `python -m bench.<name> ...`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return "python " + shlex.join(["-m", module, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "nice": os.nice(0),  # the servers and wrk inherit it
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def latency_stats(values_ms: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """n, p50/p90/p99/p99.9, mean and max of latencies in ms: numpy's linear interpolation over every sample."""
    values = np.asarray(values_ms, dtype=float)
    if values.size == 0:
        return {"samples": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "p99_9_ms": None, "mean_ms": None,
                "max_ms": None}
    p50, p90, p99, p999 = np.percentile(values, [50, 90, 99, 99.9])
    return {"samples": int(values.size), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "p99_9_ms": round(float(p999), 3),
            "mean_ms": round(float(values.mean()), 3), "max_ms": round(float(values.max()), 3)}


class OtherWork:
    """How much of the machine's CPU went to processes outside this benchmark while it ran: a noisy run says so.

    Busy time of the whole machine (psutil.cpu_times) minus that of this process and its descendants (the
    servers, their workers, and finished children such as wrk). Call `start()` with the servers up, `report()`
    before stopping them."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.started = 0.0
        self.busy0 = self.ours0 = 0.0

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()._asdict()
        # guest time is already counted in user time; idle and iowait are not busy.
        return sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))

    def _ours(self) -> float:
        total = sum(self.me.cpu_times()[:4])  # user, system, and children's that were waited for (wrk runs)
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total

    def start(self) -> None:
        self.started, self.busy0, self.ours0 = time.monotonic(), self._busy(), self._ours()

    def report(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        other = max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0))
        cpus = os.cpu_count() or 1
        return {"wall_s": round(wall, 1), "cpu_s": round(other, 1), "share_of_machine": round(other / (wall * cpus), 3),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


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


def start_module(procs: Processes, name: str, module: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m <module> --port <free port> args...` from the repository root; returns the process and port."""
    port = free_port()
    proc = procs.start(name, [sys.executable, "-m", module, "--port", str(port), *args], {**os.environ})
    return proc, port


def start_upstream(procs: Processes) -> str:
    """The scripted OpenAI-compatible upstream (echoes the prompt); returns its /v1 base URL."""
    proc, port = start_module(procs, "upstream", "bench.upstream")
    v1 = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{v1}/models", proc, procs, "upstream")
    return v1


def start_floor(procs: Processes, upstream_v1: str) -> str:
    """The bare pass-through proxy (bench/floor_proxy.py) in front of the upstream; returns its /v1 base URL."""
    proc, port = start_module(procs, "floor", "bench.floor_proxy", "--upstream", upstream_v1.removesuffix("/v1"))
    v1 = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{v1}/models", proc, procs, "floor")
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
    """`moe serve` (one worker) after `moe db upgrade` of `database_url`; returns its base URL once ready."""
    workdir = procs.workdir
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "MOE_CONFIG": str(workdir / "config.yaml"),
        "DATABASE_URL": database_url,
        "MOE_SPILL_DIR": str(workdir / "spill"),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    port = free_port()
    proc = procs.start("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", proc, procs, "gateway")
    return base


def chat_body(model: str, prompt: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


# -- closed loop: wrk -----------------------------------------------------------------------------
WRK_SCRIPT = Path(__file__).with_name("wrk.lua")


@dataclass(frozen=True)
class Target:
    """A chat completions URL and the model to ask there."""

    url: str
    model: str


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("the closed-loop benchmarks drive the load with wrk: `apt-get install wrk` (Debian's package)")
    return found


def wrk_version() -> str:
    # `wrk -v` prints its version line and exits 1.
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def run_wrk(url: str, bodies: Path, connections: int, duration_s: int, pause_ms: int = 0) -> dict[str, Any]:
    """wrk with `connections` clients for `duration_s` seconds (wrk takes whole seconds), POSTing the bodies of
    `bodies` (one JSON per line) in turn, each client pausing after an answer, `pause_ms` on average (bench/wrk.lua
    draws it; 0: a closed loop); requests/s, errors by kind and latency stats over every answered request."""
    threads = max(1, min(connections, os.cpu_count() or 1))
    argv = [wrk_binary(), "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:d}s",
            "--timeout", f"{REQUEST_TIMEOUT_S:g}s", "-s", str(WRK_SCRIPT), url, "--", str(bodies), str(threads),
            str(pause_ms)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + REQUEST_TIMEOUT_S + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    histogram = np.array(raw["latency_us"] or [[0, 0]], dtype=np.int64).reshape(-1, 2)
    latencies_ms = np.repeat(histogram[:, 0], histogram[:, 1]) / 1000.0
    statuses = {str(k): v for k, v in sorted(raw["statuses"].items())}
    socket = {k: v for k, v in raw["errors"].items() if k != "status" and v}
    not_ok = sum(v for k, v in statuses.items() if k != "200")
    errors = sum(socket.values()) + not_ok + raw["bad_bodies"]
    wall_s = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "errors": errors,
        "error_kinds": {**{f"socket_{k}": v for k, v in socket.items()},
                        **{f"http_{k}": v for k, v in statuses.items() if k != "200"},
                        **({"bad_body": raw["bad_bodies"]} if raw["bad_bodies"] else {})},
        "rps": round(raw["requests"] / wall_s, 1),
        "wall_s": round(wall_s, 2),
        **latency_stats(latencies_ms),
    }


def measure(
    targets: dict[str, Target], prompts: Sequence[str], levels: Sequence[int], duration_s: int, warmup_s: int,
    workdir: Path, pause_ms: int = 0,
) -> dict[str, dict[str, Any]]:
    """Every target at every concurrency level, in one run: an unmeasured warm-up, then the measured run, each
    a wrk run of its own over the same prompts (`run_wrk`, each client pausing `pause_ms` on average after an
    answer). Keyed `c<level>`, then by target."""
    wrk_binary()
    files: dict[str, Path] = {}
    for name, target in targets.items():
        files[name] = workdir / f"bodies-{name}.jsonl"
        files[name].write_text("".join(json.dumps(chat_body(target.model, p)) + "\n" for p in prompts))
    results: dict[str, dict[str, Any]] = {}
    for level in levels:
        row: dict[str, Any] = {}
        for name, target in targets.items():
            if warmup_s > 0:
                run_wrk(target.url, files[name], level, warmup_s, pause_ms)
            row[name] = r = run_wrk(target.url, files[name], level, duration_s, pause_ms)
            few = " [yellow](under 1,000 samples: a rough p99)[/]" if r["samples"] < 1000 else ""
            console.print(f"c{level:<4} {name:<16} {r['rps']:>8.0f} req/s  p50 {_ms(r['p50_ms'])} ms  "
                          f"p99 {_ms(r['p99_ms'])} ms  n {r['samples']:>6}  errors {r['errors']}{few}")
        results[f"c{level}"] = row
    return results


def _ms(value: float | None) -> str:
    return "      -" if value is None else f"{value:7.2f}"


def added_over(results: dict[str, dict[str, Any]], systems: Sequence[str], base: str = "direct") -> None:
    """Adds to each level's row `added_p50_ms` / `added_p99_ms`: each system's latency minus `base`'s (None when
    either answered nothing)."""
    for row in results.values():
        for stat in ("p50", "p99"):
            key, start = f"{stat}_ms", row[base][f"{stat}_ms"]
            row[f"added_{stat}_ms"] = {s: None if row[s][key] is None or start is None else round(row[s][key] - start, 3)
                                       for s in systems}


def generator_ceiling(results: dict[str, dict[str, Any]], base: str = "direct") -> dict[str, Any]:
    """Per level: the direct row's req/s (what the generator and the bare upstream reach together, so a lower
    bound of the generator's ceiling) over the fastest other target's. Below CEILING_FACTOR the generator
    may have held the others back."""
    levels = {}
    for level, row in results.items():
        others = {k: v["rps"] for k, v in row.items() if isinstance(v, dict) and "rps" in v and k != base}
        fastest = max(others, key=others.get)
        ratio = row[base]["rps"] / others[fastest] if others[fastest] > 0 else float("inf")
        levels[level] = {"direct_rps": row[base]["rps"], "fastest_other": fastest, "fastest_other_rps": others[fastest],
                         "ratio": round(ratio, 1)}
    ok = all(v["ratio"] >= CEILING_FACTOR for v in levels.values())
    return {"required_ratio": CEILING_FACTOR, "ok": ok, "levels": levels}


def floor_targets(results: dict[str, dict[str, Any]], routed: str = "gateway_routed",
                  floor: str = "floor") -> dict[str, Any]:
    """Issue 13's checks against the floor, measured in the same run: at 1 client the routed request adds at
    most 3x what the floor adds at p50; at 32 clients it sustains at least 0.5x the floor's req/s."""
    checks: dict[str, Any] = {}
    if "c1" in results:
        row = results["c1"]
        added, floor_added = row["added_p50_ms"][routed], row["added_p50_ms"][floor]
        known = added is not None and floor_added is not None
        checks["c1_added_p50"] = {"routed_ms": added, "floor_ms": floor_added,
                                  "limit_ms": round(3 * floor_added, 3) if known else None,
                                  "ratio": round(added / floor_added, 2) if known and floor_added > 0 else None,
                                  "met": known and added <= 3 * floor_added}
    if "c32" in results:
        row = results["c32"]
        rps, floor_rps = row[routed]["rps"], row[floor]["rps"]
        checks["c32_rps"] = {"routed_rps": rps, "floor_rps": floor_rps, "limit_rps": round(0.5 * floor_rps, 1),
                             "ratio": round(rps / floor_rps, 2) if floor_rps else None,
                             "met": floor_rps > 0 and rps >= 0.5 * floor_rps}
    return checks


def print_checks(ceiling: dict[str, Any], checks: dict[str, Any]) -> None:
    for level, c in ceiling["levels"].items():
        style = "green" if c["ratio"] >= ceiling["required_ratio"] else "bold red"
        console.print(f"[{style}]{level}: generator ceiling {c['direct_rps']:.0f} req/s direct = {c['ratio']}x "
                      f"{c['fastest_other']} ({c['fastest_other_rps']:.0f}); {ceiling['required_ratio']:g}x required[/]")
    for name, c in checks.items():
        console.print(f"[{'green' if c['met'] else 'bold red'}]{name}: {json.dumps(c)}[/]")
