"""Cold start: `moe serve` to the first 200 from `/readyz`, over several runs.

The gateway serves the default feature router (the embedding-domain artifact `moe router train` writes) in
front of three OpenAI-compatible experts on the scripted upstream (`python -m bench.upstream`), with a SQLite
decision log migrated beforehand (a copy per run; migrating is not part of a start). Each run spawns the
gateway's `moe` script (that of `--python`'s environment, so a slim serving install can be measured from this
one), polls `/readyz` every 10 ms from the spawn and stops at the first 200, then sends one routed chat
request and stops the gateway. Phases come from the time each of uvicorn's log lines arrived:

- `app_built_s`: "Started server process": Python, the `moe` CLI, uvicorn, and `create_app` (imports);
- `lifespan_s`: "Waiting for application startup" to "Application startup complete": routers loaded, decision
  log, first expert probe;
- `ready_s`: the first 200 from `/readyz` (uvicorn binds the port only after the lifespan's start-up);
- `cpu_s`: the CPU time the gateway process had used by then (Linux), which a busy machine inflates far less
  than wall time: the 1-minute load average before and after is recorded beside them.

One more run under `PYTHONPROFILEIMPORTTIME=1` (not timed) lists what the serving process imported: the
heavy packages among them (which serving with this router should not load) and the slowest top-level imports.
A first unmeasured run warms the page cache and writes the byte-code files (PYTHONDONTWRITEBYTECODE is dropped).

    python -m bench.cold_start [--runs 5] [--python PATH] [--out bench/results/cold_start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import DEFAULT_ROUTER, ROOT, Processes, gateway_config, machine, router_version, start_upstream
from bench.upstream import free_port

# What serving with a feature router and OpenAI-compatible experts must not import: the `train` extra's packages,
# ONNX Runtime, litellm (only `provider: litellm` experts need it), and model2vec and huggingface_hub (routing
# reads the static table without them: their loader alone took about 1 s of a start).
HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "scipy", "onnx", "onnxruntime", "matplotlib",
         "litellm", "model2vec", "huggingface_hub")
PHASE_LINES = {
    "app_built_s": "Started server process",
    "lifespan_started_s": "Waiting for application startup",
    "lifespan_done_s": "Application startup complete",
}
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")
READY_TIMEOUT_S = 120.0
POLL_S = 0.01


class Gateway:
    """One `moe serve`, its output read line by line (each line timed on arrival)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.started, raw.decode(errors="replace").rstrip("\n")))

    def when(self, needle: str) -> float | None:
        return next((round(t, 3) for t, line in self.lines if needle in line), None)

    def log(self, last: int = 40) -> str:
        return "\n".join(line for _, line in self.lines[-last:] if not line.startswith("import time:"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


def serve_argv(python: Path, port: int) -> list[str]:
    """`moe serve` from `python`'s environment (its console script), else `python -m gateway.cli serve`."""
    script = python.parent / "moe"
    head = [str(script)] if script.is_file() else [str(python), "-m", "gateway.cli"]
    return [*head, "serve", "--port", str(port)]


def base_env(workdir: Path) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE is dropped so that the warm-up run writes the byte-code of an editable checkout, as
    # any first run does (an installed package has it from pip): else every start compiles the project's modules.
    dropped = ("REDIS_URL", "MOE_OTEL", "PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {
        **env,
        "MOE_CONFIG": str(workdir / "config.yaml"),
        "MOE_SPILL_DIR": str(workdir / "spill"),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(ROOT),
    }


def one_start(python: Path, env: dict[str, str], database: Path, *, profile_imports: bool = False) -> dict[str, Any]:
    port = free_port()
    env = {**env, "DATABASE_URL": f"sqlite:///{database}"}
    if profile_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    gateway = Gateway(serve_argv(python, port), env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = None
        with httpx.Client(timeout=2.0) as client:
            while ready is None:
                now = time.perf_counter() - gateway.started
                if gateway.proc.poll() is not None:
                    raise RuntimeError(f"moe serve exited with {gateway.proc.returncode}:\n{gateway.log()}")
                if now > READY_TIMEOUT_S:
                    raise RuntimeError(f"no 200 from /readyz within {READY_TIMEOUT_S:.0f} s:\n{gateway.log()}")
                try:
                    if client.get(f"{base}/readyz").status_code == 200:
                        ready = time.perf_counter() - gateway.started
                        cpu = cpu_seconds(gateway.proc.pid)
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
            sent = time.perf_counter()
            reply = client.post(f"{base}/v1/chat/completions", timeout=30.0, json={
                "model": "moe-auto", "max_tokens": 16,
                "messages": [{"role": "user", "content": "What is the derivative of x^3 + 2x with respect to x?"}]})
            first_request_ms = (time.perf_counter() - sent) * 1000
        if reply.status_code != 200:
            raise RuntimeError(f"the routed request after start-up answered {reply.status_code}: {reply.text[:500]}")
    finally:
        gateway.stop()
    run: dict[str, Any] = {"ready_s": round(ready, 3), "cpu_s": cpu,
                           **{k: gateway.when(v) for k, v in PHASE_LINES.items()}}
    if run["lifespan_started_s"] is not None and run["lifespan_done_s"] is not None:
        run["lifespan_s"] = round(run["lifespan_done_s"] - run["lifespan_started_s"], 3)
    run |= {"first_request_ms": round(first_request_ms, 1), "expert": reply.headers.get("x-moe-expert")}
    if profile_imports:
        run["imports"] = import_profile([line for _, line in gateway.lines])
    return run


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used so far: less sensitive than wall time to a busy machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # not Linux
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def import_profile(lines: list[str], top: int = 15) -> dict[str, Any]:
    """From `-X importtime` lines: every top-level package imported, the heavy ones among them, the slowest."""
    modules: dict[str, int] = {}  # module -> cumulative microseconds
    top_level: dict[str, int] = {}  # imported from the top (not nested in another import)
    for line in lines:
        match = IMPORT_LINE.match(line)
        if match is None:
            continue
        _, cumulative, indent, name = match.groups()
        modules[name] = int(cumulative)
        if len(indent) == 1:
            top_level[name] = top_level.get(name, 0) + int(cumulative)
    packages = sorted({name.partition(".")[0] for name in modules})
    heavy = sorted(h for h in HEAVY if h in modules)
    slowest = sorted(top_level.items(), key=lambda item: -item[1])[:top]
    return {
        "modules": len(modules),
        "heavy_loaded": heavy,
        "slowest_top_level_ms": {name: round(us / 1000, 1) for name, us in slowest},
        "packages": packages,
    }


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured starts (after one unmeasured warm-up)")
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="the interpreter whose environment serves (default: this one)")
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ROUTER, help="the trained router to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cold_start.json")
    args = parser.parse_args()
    args.out = args.out.resolve()
    python = args.python if args.python.is_absolute() else Path.cwd() / args.python  # a venv's python is a link
    version = router_version(args.artifact)
    load_before = os.getloadavg()  # wall times track how busy the machine is; CPU seconds much less

    workdir = Path(tempfile.mkdtemp(prefix="moe-cold-start-"))
    try:
        with Processes(workdir) as procs:
            upstream = start_upstream(procs)
            (workdir / "config.yaml").write_text(yaml.safe_dump(gateway_config(upstream, args.artifact.resolve())))
            env = base_env(workdir)
            migrated = workdir / "migrated.db"
            subprocess.run([str(python), "-m", "gateway.cli", "db", "upgrade"], cwd=ROOT, check=True,
                           capture_output=True, env={**env, "DATABASE_URL": f"sqlite:///{migrated}"})

            def start(i: int, **kwargs: bool) -> dict[str, Any]:
                database = workdir / f"run-{i}.db"
                shutil.copyfile(migrated, database)
                return one_start(python, env, database, **kwargs)

            start(0)  # warm-up: page cache, byte-code
            runs = []
            for i in range(1, args.runs + 1):
                runs.append(start(i))
                print(f"run {i}: ready in {runs[-1]['ready_s']:.2f} s, {runs[-1]['cpu_s']} s of CPU "
                      f"(app built {runs[-1]['app_built_s']} s, lifespan {runs[-1].get('lifespan_s')} s), "
                      f"first request {runs[-1]['first_request_ms']:.0f} ms to {runs[-1]['expert']}", flush=True)
            profiled = start(args.runs + 1, profile_imports=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "command": "python -m bench.cold_start " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "router": {"family": "embedding-domain", "version": version},
        "experts": "three OpenAI-compatible experts on the scripted upstream (bench/upstream.py)",
        "decision_log": "SQLite, migrated beforehand",
        "ready_s": stats([r["ready_s"] for r in runs]),
        "cpu_s": stats([r["cpu_s"] for r in runs]) if all(r["cpu_s"] is not None for r in runs) else None,
        "app_built_s": stats([r["app_built_s"] for r in runs if r["app_built_s"] is not None]),
        "lifespan_s": stats([r["lifespan_s"] for r in runs if r.get("lifespan_s") is not None]),
        "first_request_ms": stats([r["first_request_ms"] for r in runs]),
        "runs": runs,
        "imports": profiled["imports"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ready in {result['ready_s']['median']:.2f} s median ({result['ready_s']['min']:.2f}-"
          f"{result['ready_s']['max']:.2f}) over {len(runs)} runs; heavy imports: "
          f"{', '.join(result['imports']['heavy_loaded']) or 'none'}; written to {args.out}")


if __name__ == "__main__":
    main()
