"""What the gateway adds in front of real GPU inference: time to first token, whole answers and throughput.

One run starts, each in its own process: the GPU upstream (bench/gpu_upstream.py: a transformers Llama model in
SmolLM2-1.7B's shape with RANDOM weights, generating on the GPU in bf16, so real inference timings and gibberish
text), the scripted echo upstream (bench/upstream.py) and the gateway (`moe serve`, one worker, three experts on
the GPU upstream, the trained router routing `moe-auto`). A closed-loop aiohttp client in this process
(bench/gpu_client.py) streams answers of exactly `--max-tokens` tokens for MMLU-Pro test questions (a different
one each request) from:

- direct: the GPU upstream alone;
- gateway_expert: through the gateway, the expert `general` by name;
- gateway_routed: through the gateway, `moe-auto` (the router picks the expert);
- echo: the echo upstream, at the same concurrency, for at most CEILING_S seconds: what this client sustains when
  the server costs almost nothing, its own ceiling (`generator_ceiling`: far above the GPU rows, or the client
  held them back).

At each concurrency N clients each send their next request when their last one is answered: `--warmup` seconds,
then the measured window of `--duration` seconds (stretched, up to MAX_STRETCH times, until the clients have sent
as many requests in it as there are clients), then on until every request sent in the window has its answer (so
each was answered under the same load; then the open ones are cancelled, and the next measurement waits until
the GPU upstream has none in flight). The figures: TTFT (the first chunk with content) and whole-answer
latency ([DONE]) p50/p99 of the requests sent in the window, the answers completed in it per second, and the
output tokens arriving in it per second. What the gateway adds is its rows minus direct (p50 and p99 of TTFT and
latency) and its throughput over direct's. The GPU upstream does not batch across requests as vLLM does (each
request decodes in its own thread), so what 8 clients sustain is that server's throughput, not the gateway's: the
figure that matters is what the gateway adds to it.

Writes bench/results/gpu_overhead.json (the command, the GPU, torch/transformers versions, the model's shape,
every figure; rewritten after each measurement, so a run cut short keeps what it measured) and a plot beside it.

    python -m bench.gpu_overhead [--device cuda] [--shape smollm2-1.7b] [--concurrency 1 8] [--duration 20]
    python -m bench.gpu_overhead --device cpu --shape tiny --duration 3 --out-dir var/bench   # a CPU smoke run

A machine without shared/ (the question pool) or var/ (the router, the static encoder's 44 MB table) runs from
a pack of what the run reads: `--pack DIR` writes the prompts, a copy of the router and the encoder rows those
prompts use (the rest of the table is zeros, so the router scores these prompts exactly as with the whole
table), and `--from-pack DIR` runs from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from bench.gpu_client import Load, closed_loop, summary, wait_idle
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
    questions,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
    wait_http,
)
from bench.overhead import gateway_settings
from bench.upstream import free_port
from training.pool import load_pool

PROMPTS = 500  # distinct questions each target cycles through
SEED = 0
GPU_TARGETS = ("direct", "gateway_expert", "gateway_routed")
ADDED = ("gateway_expert", "gateway_routed")
CEILING_S = 5.0  # the echo row's measured seconds: a ceiling far above the GPU rows needs no more
NAME = "gpu_overhead"


def sampled_questions() -> list[str]:
    """PROMPTS test questions drawn across the whole split (it is ordered by category), in a fixed random order."""
    every = questions(len(load_pool().of_split("test").questions))
    return random.Random(SEED).sample(every, PROMPTS)


# -- the pack: what a machine without shared/ and var/ runs from ----------------------------------------
def write_pack(directory: Path, router: Path) -> None:
    """Prompts, the router, and the static encoder rows the prompts use (see the module's docstring)."""
    from routers.encoder import StaticTable, cache_dir

    prompts = sampled_questions()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prompts.json").write_text(json.dumps(prompts))
    shutil.copytree(router, directory / "router", dirs_exist_ok=True)
    identity = json.loads((router / "router.json").read_text())["params"]["encoder"]
    source, target = cache_dir() / "static" / identity, directory / "static" / identity
    table = StaticTable.read(source)
    # The pieces `encoder.embed_static` looks up for these texts: the same cut and the same encode call.
    used = sorted({i for p in prompts for i in table.tokenizer.encode(p[: table.chars], add_special_tokens=False).ids})
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, target / name)
    ids = np.asarray(used, dtype=np.int64)
    np.savez_compressed(
        target / "rows.npz", ids=ids, rows=table.embedding[ids], shape=np.asarray(table.embedding.shape)
    )
    console.print(
        f"{len(prompts)} prompts, router {router_version(router)}, {len(used)} of "
        f"{table.embedding.shape[0]} encoder rows written to {directory}"
    )


def unpack_static(pack: Path, cache: Path) -> Path:
    """The pack's encoder tables as whole safetensors files under `cache` (a MOE_CACHE_DIR); returns `cache`."""
    from safetensors.numpy import save_file

    for rows_file in (pack / "static").glob("*/rows.npz"):
        target = cache / "static" / rows_file.parent.name
        target.mkdir(parents=True, exist_ok=True)
        with np.load(rows_file) as saved:
            table = np.zeros(tuple(saved["shape"]), dtype=saved["rows"].dtype)
            table[saved["ids"]] = saved["rows"]
        save_file({"embeddings": table}, str(target / "model.safetensors"))
        for name in ("config.json", "tokenizer.json"):
            shutil.copyfile(rows_file.parent / name, target / name)
    return cache


# -- the load ---------------------------------------------------------------------------------------------
async def measure_all(
    targets: dict[str, Target],
    prompts: Sequence[str],
    args: argparse.Namespace,
    health_url: str,
    results: dict[str, dict[str, Any]],
    saved: Callable[[], None],
) -> None:
    """Every target at every concurrency; `results` filled in place, `saved()` after each measurement.

    The GPU rows are measured in `--passes` interleaved passes, the order reversed every other pass (direct,
    expert, routed, then routed, expert, direct), and pooled: a drift of the GPU or the machine over the run
    (clocks, caches, other work) then weighs on every row alike instead of on whichever ran first. Before the
    first, `--gpu-warmup` seconds of unmeasured load on the GPU upstream."""
    gpu = [name for name in targets if name in GPU_TARGETS]
    async with aiohttp.ClientSession() as session:
        if args.gpu_warmup > 0:
            await closed_loop(
                targets["direct"],
                prompts,
                max(args.concurrency),
                0.0,
                args.gpu_warmup,
                args.max_tokens,
                args.max_tokens,
            )
        for level in args.concurrency:
            row = results.setdefault(f"c{level}", {})
            loads: dict[str, list[Load]] = {name: [] for name in targets}
            order = [(p, name) for p in range(args.passes) for name in (gpu if p % 2 == 0 else gpu[::-1])]
            for p, name in [*order, *((0, n) for n in targets if n not in gpu)]:
                idle_s = await wait_idle(session, health_url)
                if name == "echo":  # as many tokens as the question has words, up to max_tokens
                    timing, expect = (min(args.warmup, 1.0), min(args.duration, CEILING_S)), None
                else:
                    timing, expect = (args.warmup, args.duration), args.max_tokens
                loads[name].append(await closed_loop(targets[name], prompts, level, *timing, args.max_tokens, expect))
                r = row[name] = {**summary(loads[name]), "waited_for_idle_s": idle_s}
                console.print(
                    f"c{level:<3} {name:<14} pass {p + 1} TTFT p50/p99 {_ms(r['ttft']['p50_ms'])} "
                    f"{_ms(r['ttft']['p99_ms'])}  latency {_ms(r['latency']['p50_ms'])} {_ms(r['latency']['p99_ms'])} ms  "
                    f"{r['answers_per_s']:6.2f}/s {r['output_tokens_per_s']:8.1f} tok/s  "
                    f"n {r['latency']['samples']:>4} err {r['errors']}"
                    + (f" [red]({r['first_error']})[/]" if r["first_error"] else "")
                )
                saved()


def _ms(value: float | None) -> str:
    return "      -" if value is None else f"{value:8.1f}"


def added(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per level and gateway row: its TTFT and latency minus direct's (p50, p99, ms), its throughput over direct's."""
    out: dict[str, Any] = {}
    for level, row in results.items():
        if "direct" not in row:
            continue
        base = row["direct"]
        out[level] = {}
        for name in ADDED:
            if name not in row:
                continue
            r = row[name]
            figures = {
                f"{kind}_{stat}_ms": _minus(r[kind][f"{stat}_ms"], base[kind][f"{stat}_ms"])
                for kind in ("ttft", "latency")
                for stat in ("p50", "p99")
            }
            figures |= {
                f"{kind}_ratio": round(r[kind] / base[kind], 3) if base[kind] else None
                for kind in ("answers_per_s", "output_tokens_per_s")
            }
            out[level][name] = figures
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def generator_ceiling(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per level: the echo row's answers and tokens per second over the fastest GPU row's."""
    out: dict[str, Any] = {}
    for level, row in results.items():
        gpu = [row[name] for name in GPU_TARGETS if name in row]
        if "echo" not in row or not gpu:
            continue
        echo = row["echo"]
        out[level] = {
            "echo_answers_per_s": echo["answers_per_s"],
            "echo_output_tokens_per_s": echo["output_tokens_per_s"],
        }
        for kind in ("answers_per_s", "output_tokens_per_s"):
            fastest = max(r[kind] for r in gpu)
            out[level][f"{kind}_ratio"] = round(echo[kind] / fastest, 1) if fastest else None
    return out


# -- the plot ---------------------------------------------------------------------------------------------
def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, levels = report["results"], list(report["results"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(GPU_TARGETS)
    for ax, kind, title in ((axes[0], "ttft", "time to first token"), (axes[1], "latency", "whole answer")):
        for i, name in enumerate(GPU_TARGETS):
            xs = [j + (i - (len(GPU_TARGETS) - 1) / 2) * width for j in range(len(levels))]
            p50 = [_value(results[level], name, kind, "p50_ms") for level in levels]
            p99 = [_value(results[level], name, kind, "p99_ms") for level in levels]
            ax.bar(xs, p50, width, label=f"{name} p50")
            ax.scatter(xs, p99, marker="_", s=300, color="black", label="p99" if i == 0 else None, zorder=3)
            if name in ADDED:
                for x, y, level in zip(xs, p50, levels, strict=True):
                    plus = report["added"].get(level, {}).get(name, {}).get(f"{kind}_p50_ms")
                    if plus is not None:
                        ax.annotate(
                            f"{plus:+.1f} ms",
                            (x, y),
                            textcoords="offset points",
                            xytext=(0, 3),
                            ha="center",
                            fontsize=7,
                        )
        ax.set_xticks(range(len(levels)), [f"{level.removeprefix('c')} client(s)" for level in levels])
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend(fontsize=7)
    gpu = report["gpu"]
    fig.suptitle(
        f"What the gateway adds: {gpu['shape']} (random weights, {gpu['dtype']}) on {gpu['device_name']}, "
        f"{report['settings']['max_tokens']} tokens per answer; labels: added p50 over direct",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _value(row: dict[str, Any], name: str, kind: str, stat: str) -> float:
    value = row.get(name, {}).get(kind, {}).get(stat)
    return float("nan") if value is None else value


# -- the run ----------------------------------------------------------------------------------------------
def start_gpu_upstream(procs: Processes, python: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [
        str(python),
        "-m",
        "bench.gpu_upstream",
        "--port",
        str(port),
        "--device",
        args.device,
        "--shape",
        args.shape,
        "--max-concurrent",
        str(args.upstream_concurrent or max(args.concurrency)),
    ]
    return procs.start("gpu_upstream", argv, {**os.environ}), f"http://127.0.0.1:{port}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--shape", choices=("smollm2-1.7b", "tiny"), default="smollm2-1.7b")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="clients in flight")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per target and concurrency")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds of load before each measurement")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens in every answer")
    parser.add_argument("--passes", type=int, default=2, help="interleaved passes over the GPU rows (see measure_all)")
    parser.add_argument("--gpu-warmup", type=float, default=15.0, help="unmeasured seconds of load before the first")
    parser.add_argument(
        "--upstream-concurrent",
        type=int,
        help="requests the GPU upstream decodes at once (default: the most clients); 1 serves them in "
        "turn, so no decode threads contend",
    )
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument(
        "--upstream-python",
        type=Path,
        default=Path(sys.executable),
        help="interpreter the GPU upstream runs under (default: this one)",
    )
    parser.add_argument("--logs", type=Path, help="copy the servers' logs into this folder at the end")
    parser.add_argument("--pack", type=Path, metavar="DIR", help="write a pack to DIR and exit (see above)")
    parser.add_argument("--from-pack", type=Path, metavar="DIR", help="read prompts, router and encoder from DIR")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help=f"report JSON, the plot beside it (default bench/results/{NAME}.json)")
    where.add_argument("--out-dir", type=Path, help=f"write {NAME}.json and {NAME}.png into this folder")
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.duration <= 0 or args.warmup < 0 or args.max_tokens < 1 or args.passes < 1:
        parser.error("concurrency, max-tokens and passes must be >= 1, duration > 0, warmup >= 0")
    return args


def main() -> None:
    args = parse_args()
    if args.pack:
        write_pack(args.pack, args.router)
        return
    out = args.out or (args.out_dir or ROOT / "bench/results") / f"{NAME}.json"
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="moe-gpu-bench-"))
    if args.from_pack:
        router = args.from_pack / "router"
        prompts = json.loads((args.from_pack / "prompts.json").read_text())
        os.environ["MOE_CACHE_DIR"] = str(unpack_static(args.from_pack, work / "cache"))  # the gateway inherits it
    else:
        router, prompts = args.router, sampled_questions()
    router = router.resolve()
    results: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "command": command_line(),
        "complete": False,
        "note": (
            "RANDOM weights in SmolLM2-1.7B's shape (no weights travel to the GPU machine): every token is a "
            "real forward pass on the GPU, the text is gibberish. The GPU upstream decodes each request in "
            "its own thread without batching across requests (unlike vLLM): throughput at many clients is that "
            "server's; the gateway's cost is what it adds over direct."
        ),
        "machine": machine(),
        "router": router_version(router),
        "settings": {
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "passes": args.passes,
            "gpu_warmup_s": args.gpu_warmup,
            "upstream_concurrent": args.upstream_concurrent or max(args.concurrency),
            "prompts": f"{len(prompts)} MMLU-Pro test questions drawn across the split (1,000 characters at most), "
            "one per request",
            "client": "aiohttp in the benchmark's process, closed loop, streamed (stream_options.include_usage); "
            "TTFT = the first chunk with content; latency = [DONE]",
            "window": "latency and TTFT of the requests sent in the measured window (the load kept on until each "
            "has its answer); answers/s = answers completed in it; tokens/s = content chunks arriving in it",
            "gateway": gateway_settings(max(args.concurrency)),
            "echo": "bench/upstream.py: echoes the prompt word by word, up to max_tokens words",
        },
    }

    def save() -> None:
        report["results"], report["added"], report["generator_ceiling"] = (
            results,
            added(results),
            generator_ceiling(results),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    try:
        with Processes(work) as procs:
            gpu_proc, gpu_base = start_gpu_upstream(procs, args.upstream_python, args)
            echo_v1 = start_upstream(procs)
            wait_http(f"{gpu_base}/health", gpu_proc, procs, "gpu_upstream", timeout_s=300)
            report["gpu"] = {
                k: v
                for k, v in httpx.get(f"{gpu_base}/health", timeout=10).json().items()
                if k not in ("status", "in_flight")
            }
            report["gpu"]["start_log"] = procs.log_tail("gpu_upstream", 3)
            console.print(
                f"GPU upstream: {report['gpu']['shape']}, {report['gpu']['parameters']:,} parameters "
                f"({report['gpu']['dtype']}) on {report['gpu']['device_name']}"
            )
            gateway = start_gateway(
                procs, gateway_config(f"{gpu_base}/v1", router, max(args.concurrency)), f"sqlite:///{work}/decisions.db"
            )
            targets = {
                "direct": Target(f"{gpu_base}/v1/chat/completions", f"{args.shape}-random"),
                "gateway_expert": Target(f"{gateway}/v1/chat/completions", "general"),
                "gateway_routed": Target(f"{gateway}/v1/chat/completions", "moe-auto"),
                "echo": Target(f"{echo_v1}/chat/completions", "echo-general"),
            }
            watch = OtherWork()
            watch.start()
            asyncio.run(measure_all(targets, prompts, args, f"{gpu_base}/health", results, save))
            report["other_work"] = watch.report()
            report["complete"] = True
            save()
    finally:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copyfile(log, args.logs / log.name)
        shutil.rmtree(work, ignore_errors=True)
    plot(report, out.with_suffix(".png"))
    console.print(f"added over direct: {json.dumps(report['added'])}")
    console.print(f"generator ceiling: {json.dumps(report['generator_ceiling'])}")
    console.print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
