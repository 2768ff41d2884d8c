"""This gateway side by side with LiteLLM's proxy server, in front of the same fast local upstream.

One run, one machine, one load generator (wrk, through bench/harness.py): the scripted upstream
called directly (also the generator's ceiling, which must stay >= 5x every other row); through the
floor (bench/floor_proxy.py: a bare Starlette + aiohttp pass-through, the least a Python proxy adds);
through this gateway with routing on (`moe-auto`) and off (the expert `general` by name); and through
LiteLLM's proxy (`litellm --config ...`, model `general` = `hosted_vllm/echo-general` at the same
upstream). At each concurrency every target gets the same warm-up and then the same queries for the
same time; the report gives latency added over direct (p50/p99, over every request, with sample
counts), the requests/s that many clients sustain, and issue 13's checks against the floor (at 1
client the routed request adds at most 3x the floor's p50; at 32 it sustains at least 0.5x the
floor's requests/s).

The proxy runs from its own virtualenv (.venv-litellm-proxy, made by scripts/setup-litellm-proxy.sh,
which this script calls): `litellm[proxy]` pins packages the gateway's .venv must not inherit. Every
server gets one worker process; the proxy runs without a database or master key and with logging
at ERROR and its access log off. The JSON records every setting.

    python -m bench.vs_litellm                 # the full run -> bench/results/vs_litellm.{json,png}
    python -m bench.vs_litellm --quick         # a smoke run -> var/bench/vs_litellm.smoke.{json,png}
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

from bench.harness import (
    ROOT,
    OtherWork,
    Processes,
    Target,
    added_over,
    command_line,
    console,
    floor_targets,
    free_port,
    generator_ceiling,
    machine,
    measure,
    print_checks,
    questions,
    router_version,
    stop_on_sigterm,
    wait_http,
)
from bench.overhead import (
    FLOOR_SETTINGS,
    PROMPTS,
    add_arguments,
    gateway_settings,
    load_settings,
    print_table,
    resolve,
    start_base,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

PROXY_VENV = ROOT / ".venv-litellm-proxy"
EXPERT_TIMEOUT_S = 60.0  # the gateway's default expert timeout, given to the proxy too
SYSTEMS = ("floor", "gateway_routed", "gateway_expert", "litellm_proxy")
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


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    """Added p50, added p99 and requests/s, grouped by concurrency, one bar per system (and direct's req/s)."""
    levels = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (("added_p50_ms", "added p50 over direct (ms)"), ("added_p99_ms", "added p99 over direct (ms)"),
              ("rps", "requests/s sustained"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        systems = (*SYSTEMS, "direct") if key == "rps" else SYSTEMS
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            values = [results[c][system]["rps"] if key == "rps" else results[c][key][system] for c in levels]
            values = [float("nan") if v is None else v for v in values]  # a target that answered nothing
            bars = ax.bar([x + i * width for x in range(len(levels))], values, width, label=system)
            ax.bar_label(bars, fmt="%.1f" if key != "rps" else "%.0f", fontsize=6)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(levels))], levels)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", linewidth=0.5)
        # Log scales: 1 client's milliseconds beside 128 clients' seconds; direct's req/s ten times the rest.
        if key == "rps":
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1.0)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(proxy_settings: dict[str, Any], smoke: bool) -> str:
    return (f"vs LiteLLM proxy {proxy_settings['litellm_version']}; floor = bare Starlette + aiohttp pass-through"
            + (" (smoke run)" if smoke else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "vs_litellm", [1, 32, 128])
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from the report JSON, run nothing")
    args = parser.parse_args()
    out = resolve(args, "vs_litellm")
    if args.replot:
        report = json.loads(out.read_text())
        plot(report["results"], out.with_suffix(".png"), plot_title(report["settings"]["litellm_proxy"], report["smoke"]))
        console.print(f"redrew {out.with_suffix('.png')}")
        return
    version = router_version(args.router)
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-vs-litellm-"))
    max_concurrency = max(args.concurrency)
    with Processes(work) as procs:
        upstream_v1, targets = start_base(procs, args.router, max_concurrency)
        proxy, proxy_settings = start_litellm_proxy(procs, upstream_v1)
        targets["litellm_proxy"] = Target(f"{proxy}/v1/chat/completions", "general")
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
        "note": ("load generator and all servers share the same cores; compare targets within one run. "
                 "rps is what `concurrency` closed-loop clients sustain (each sends its next request when "
                 "its last returns), i.e. the maximum at that concurrency"),
        "router": version,
        "settings": {
            "load": load_settings(args),
            "upstream": "bench/upstream.py: echoes the prompt, one uvicorn process",
            "floor": FLOOR_SETTINGS,
            "gateway": gateway_settings(max_concurrency),
            "litellm_proxy": proxy_settings,
        },
        "other_work": other_work,
        "generator_ceiling": ceiling,
        "targets": checks,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"), plot_title(proxy_settings, args.quick))
    print_table(results, list(targets), SYSTEMS, "gateway vs LiteLLM proxy" + (", smoke run" if args.quick else ""))
    print_checks(ceiling, checks)
    console.print(f"other work on the machine during the load: {json.dumps(other_work)}")
    console.print(f"written to {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
