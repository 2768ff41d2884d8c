"""This gateway side by side with LiteLLM's proxy server, in front of the same fast local upstream.

One run, one machine, one load generator (bench/harness.py): the scripted upstream called directly;
through this gateway with routing on (`moe-auto`) and off (the expert `general` by name); and
through LiteLLM's proxy (`litellm --config ...`, model `general` = `hosted_vllm/echo-general` at the
same upstream). At each concurrency every target gets the same warm-up and then the same queries;
the report gives latency added over direct (p50/p99) and the requests/s that many clients sustain.

The proxy runs from its own virtualenv (.venv-litellm-proxy, made by scripts/setup-litellm-proxy.sh,
which this script calls): `litellm[proxy]` pins packages the gateway's .venv must not inherit. Both
servers get one worker process; the proxy runs without a database or master key and with logging
at ERROR and its access log off. The JSON records every setting of both.

    python bench/vs_litellm.py                 # the full run -> bench/results/vs_litellm.{json,png}
    python bench/vs_litellm.py --quick         # a smoke run -> var/bench/vs_litellm.smoke.{json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
import yaml
from harness import (
    DEFAULT_ROUTER,
    MAX_TOKENS,
    REQUEST_TIMEOUT_S,
    ROOT,
    Processes,
    command_line,
    free_port,
    gateway_config,
    machine,
    measure,
    questions,
    router_version,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
    wait_http,
)
from rich import box
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

console = Console()
PROXY_VENV = ROOT / ".venv-litellm-proxy"
EXPERT_TIMEOUT_S = 60.0  # the gateway's default expert timeout, given to the proxy too
SYSTEMS = ("gateway_routed", "gateway_expert", "litellm_proxy")
# uvicorn's loggers at WARNING and its access log off: the proxy writes nothing per request.
QUIET_UVICORN = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


def proxy_config(upstream_v1: str) -> dict[str, Any]:
    """The proxy's config: the gateway's `general` expert, called the way the gateway calls it."""
    return {
        "model_list": [
            {
                "model_name": "general",
                "litellm_params": {
                    "model": "hosted_vllm/echo-general",
                    "api_base": upstream_v1,
                    "api_key": "none",
                    "timeout": EXPERT_TIMEOUT_S,
                    "max_retries": 0,
                },
            }
        ],
        "litellm_settings": {"set_verbose": False, "json_logs": False, "turn_off_message_logging": True},
        # No master key, like the gateway without API keys; this version refuses to start so unless told.
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True,
                             "dangerously_permit_weak_or_unset_master_key": True},
    }


def start_litellm_proxy(procs: Processes, upstream_v1: str) -> tuple[str, dict[str, Any]]:
    """LiteLLM's proxy on a free port, one worker; returns its base URL and the settings it ran with."""
    subprocess.run(["bash", str(ROOT / "scripts/setup-litellm-proxy.sh")], check=True)
    config = proxy_config(upstream_v1)
    (procs.workdir / "litellm.yaml").write_text(yaml.safe_dump(config))
    (procs.workdir / "litellm-logging.json").write_text(json.dumps(QUIET_UVICORN))
    port = free_port()
    argv = [str(PROXY_VENV / "bin/litellm"), "--config", str(procs.workdir / "litellm.yaml"), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1", "--log_config", str(procs.workdir / "litellm-logging.json")]
    # Nothing of ours leaks in: no DATABASE_URL (no database), no LITELLM_MASTER_KEY (no auth), no Redis.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "LITELLM_", "REDIS_", "MOE_"))}
    env |= {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = procs.start("litellm", argv, env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health/liveliness", proc, procs, "litellm")
    version = subprocess.run(
        [str(PROXY_VENV / "bin/python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    settings = {
        "litellm_version": version,
        "command": "litellm " + " ".join(argv[1:]).replace(str(procs.workdir), "<workdir>"),
        "workers": 1,
        "database": "none (no DATABASE_URL)",
        "master_key": "none",
        "environment": {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        "uvicorn_logging": "WARNING, access log off (--log_config)",
        "config": {**config, "model_list": [{**m, "litellm_params": {**m["litellm_params"], "api_base": "<upstream>/v1"}}
                                            for m in config["model_list"]]},
    }
    return base, settings


def gateway_settings(max_concurrency: int) -> dict[str, Any]:
    return {
        "command": "moe serve (uvicorn, 1 worker)",
        "workers": 1,
        "decision_log": "SQLite in the run's temporary folder (one record per request, batched off the request path)",
        "logging": "the gateway's defaults: one access line per chat request to stderr (a file here)",
        "api_keys": "off (default)",
        "redis": "off (no REDIS_URL: no response cache, in-process breakers)",
        "experts": f"3 on the upstream through litellm (hosted_vllm/echo-*), timeout {EXPERT_TIMEOUT_S:.0f} s, "
                   f"max_retries 0, max_concurrency {max_concurrency} (no bound below the load)",
        "router": "embedding (moe-auto), one routing thread",
    }


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    """Added p50, added p99 and requests/s, grouped by concurrency, one bar per system."""
    levels = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("added_p50_ms", "added p50 over direct (ms)"), ("added_p99_ms", "added p99 over direct (ms)"),
              ("rps", "requests/s sustained"))
    width = 0.8 / (len(SYSTEMS) + 1)
    for ax, (key, label) in zip(axes, panels, strict=True):
        systems = (*SYSTEMS, "direct") if key == "rps" else SYSTEMS
        for i, system in enumerate(systems):
            values = [results[c][system]["rps"] if key == "rps" else results[c][key][system] for c in levels]
            bars = ax.bar([x + i * width for x in range(len(levels))], values, width, label=system)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(levels))], levels)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000,
                        help="measured requests per target and concurrency (1,000 took 3 s at 32 clients: too noisy)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128], help="clients in flight")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to route with")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 60 requests and 10 warm-up per point, written under var/bench/")
    parser.add_argument("--out", type=Path, help="report JSON (the plot goes beside it as .png); "
                        "default bench/results/vs_litellm.json, or var/bench/vs_litellm.smoke.json with --quick")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup = 60, 10
    out: Path = args.out or (ROOT / ("var/bench/vs_litellm.smoke.json" if args.quick else "bench/results/vs_litellm.json"))
    version = router_version(args.router)
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-vs-litellm-"))
    prompts = questions(args.requests + args.warmup)
    warmup, measured = prompts[: args.warmup], prompts[args.warmup :]
    max_concurrency = max(args.concurrency)
    with Processes(work) as procs:
        upstream_v1 = start_upstream(procs)
        gateway = start_gateway(procs, gateway_config(upstream_v1, args.router, max_concurrency),
                                f"sqlite:///{work}/decisions.db")
        proxy, proxy_settings = start_litellm_proxy(procs, upstream_v1)
        targets = {
            "direct": (f"{upstream_v1}/chat/completions", "echo-general"),
            "gateway_routed": (f"{gateway}/v1/chat/completions", "moe-auto"),
            "gateway_expert": (f"{gateway}/v1/chat/completions", "general"),
            "litellm_proxy": (f"{proxy}/v1/chat/completions", "general"),
        }
        results = measure(targets, warmup, measured, args.concurrency)
        for row in results.values():
            for stat in ("p50", "p99"):
                direct = row["direct"][f"{stat}_ms"]
                row[f"added_{stat}_ms"] = {s: round(row[s][f"{stat}_ms"] - direct, 3) for s in SYSTEMS}

    report = {
        "command": command_line(),
        "smoke": args.quick,
        "machine": machine(),
        "note": ("load generator and all servers share the same cores; compare targets within one run. "
                 "rps is what `concurrency` closed-loop clients sustain (each sends its next request when "
                 "its last returns), i.e. the maximum at that concurrency"),
        "router": version,
        "settings": {
            "load": {"generator": "bench/harness.py closed_loop (httpx, in the benchmark's process)",
                     "requests": args.requests, "warmup": args.warmup, "max_tokens": MAX_TOKENS, "stream": False,
                     "timeout_s": REQUEST_TIMEOUT_S, "prompts": "MMLU-Pro test questions"},
            "upstream": "bench/upstream.py: echoes the prompt, one uvicorn process",
            "gateway": gateway_settings(max_concurrency),
            "litellm_proxy": proxy_settings,
        },
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"), f"vs LiteLLM proxy {proxy_settings['litellm_version']}"
         + (" (smoke run)" if args.quick else ""))

    table = Table("conc", "target", "p50", "p99", "+p50", "+p99", "req/s", "err", box=box.SIMPLE_HEAD,
                  title="gateway vs LiteLLM proxy, ms (+ = added over direct)" + (", smoke run" if args.quick else ""))
    for level, row in results.items():
        for name in targets:
            r = row[name]
            added = (f"{row['added_p50_ms'][name]:.2f}", f"{row['added_p99_ms'][name]:.2f}") if name in SYSTEMS else ("", "")
            table.add_row(level, name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", *added, f"{r['rps']:.0f}",
                          str(r["errors"]))
    console.print(table)
    console.print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
