"""Routing quality and cost on the MMLU-Pro pool's test split: every router artifact against the baselines.

Two scenarios: `small` (Llama-3.1-8B, mathstral-7B, Phi-3-mini: can routing beat the best small
model?) and `cost` (all seven: how close to Llama-3.1-70B's accuracy for how much less?). Routers
under var/routers/ whose experts cover a scenario are replayed in it (the others, such as
embedding-domain, route between config experts, not pool models, and are listed as skipped). One
evaluator replays them all: training/evaluate.py (what `moe router eval` runs), the same cost policy
as the gateway.

`--train` first trains the pool-routed families (skill-based, reward-distilled, bert-domain) for both
scenarios into var/routers/<family>-<small|all>/, those missing (all with `--retrain`), and records
each training's time; bert-domain for the second scenario reuses the first's fine-tuned classifier
(the classifier learns domains, whatever the experts) and refits only its domain-to-expert tables.

The targets are checked twice: `expected_cost`, with the policy trading against the cost each
candidate expects before it routes (what runs live), and `recorded_cost`, with the policy seeing each
answer's recorded cost, the protocol behind the pool README's plain-baseline figures (see
training/evaluate.py). The plot shows the first in its top row, the second below.
Writes bench/results/routing.json (with the command that produced it) and bench/results/routing.png.

    python -m bench.routing [--routers var/routers/*] [--latency-queries 200]
    python -m bench.routing --train [--families skill-based ...] [--retrain]
    python -m bench.routing --quick   # routers against the baselines that need no encoder, 50 latency
                                      # queries -> var/bench/routing.smoke.{json,png}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import POOL_SCENARIOS, ROOT, command_line, machine
from routers.dataset import RoutingDataset
from training.baselines import BASELINES
from training.dataset import load_dataset
from training.evaluate import run_scenario, summary_table
from training.evaluation_plot import plot

console = Console(width=160)
# Report key -> the pool scenario it replays (`cost`: all seven, where the cost target is checked).
SCENARIOS = {"small": "small", "cost": "all"}
FAMILIES = ("skill-based", "reward-distilled", "bert-domain")  # the families that route between the pool's models
QUICK_BASELINES = ("random", "single", "oracle", "true-label")  # logistic and knn embed every question first
# What the team set out to show (issue 3): reference figures from the pool README.
SMALL_TARGET_ACCURACY = 0.465
COST_TARGET_ACCURACY, COST_TARGET_BUDGET = 0.5864, 0.55  # accuracy at <= 55% of the best single's cost


def scenario_data(pool: RoutingDataset, scenario: str) -> RoutingDataset:
    experts = POOL_SCENARIOS[scenario]
    return pool.with_experts(list(experts)) if experts else pool


def train_missing(pool: RoutingDataset, families: list[str], directory: Path, retrain: bool,
                  limit: int | None) -> dict[str, Any]:
    """Train each family in each pool scenario into `directory/<family>-<scenario>` unless already there;
    returns what was done per artifact, with the seconds it took."""
    from routers import load_router
    from routers.bert_domain import BertDomainRouter
    from routers.quality import profiles_of
    from training.train import train_router

    done: dict[str, Any] = {}
    for family in families:
        for scenario in POOL_SCENARIOS:
            out = directory / f"{family}-{scenario}"
            if (out / "router.json").is_file() and not retrain:
                done[out.name] = {"trained": False, "note": "artifact already there"}
                continue
            data = scenario_data(pool, scenario)
            console.print(f"training {out.name} ({len(data.experts)} experts)")
            # bert-domain's classifier learns domains whatever the experts: fine-tune it once, refit the tables.
            source = next((directory / f"{family}-{s}" for s in POOL_SCENARIOS if s != scenario
                           if (directory / f"{family}-{s}" / "router.json").is_file()), None)
            if family == "bert-domain" and source is not None and limit is None:
                started = time.perf_counter()
                classifier = load_router(source, profiles_of(data)).classifier
                train, dev = data.of_split("train"), data.of_split("dev")
                BertDomainRouter(profiles_of(data)).fit(train, dev, classifier=classifier).save(out)
                done[out.name] = {"trained": True, "seconds": round(time.perf_counter() - started, 1),
                                  "note": f"classifier of {source.name}, tables refitted"}
            else:
                result = train_router(family, out, dataset=data, limit=limit)
                done[out.name] = {"trained": True, "seconds": round(result.seconds, 1),
                                  **({"limit": limit} if limit else {})}
            console.print(f"  {json.dumps(done[out.name])}")
    return done


def routed(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidates that route (routers and curve baselines), not references nor fixed choices."""
    return [r for r in report["candidates"] if r["kind"] != "reference" and r["auc"] is not None]


def targets(small: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    """The targets checked on measured settings (no interpolation), best non-reference candidate each."""
    best_small = max(routed(small), key=lambda r: r["max_accuracy"], default=None)
    budget = COST_TARGET_BUDGET * cost["best_single"]["cost"]
    within = [(p["accuracy"], p["cost"], r["name"]) for r in routed(cost) for p in r["points"] if p["cost"] <= budget]
    best_cheap = max(within, default=None)
    plain = next((r for r in cost["candidates"] if r["name"] == "logistic"), None)
    routers = [r for r in cost["candidates"] if r["kind"] == "router"]
    best_router = max(routers, key=lambda r: r["auc"], default=None)
    return {
        "small_best_accuracy": {
            "target": SMALL_TARGET_ACCURACY,
            "candidate": best_small and best_small["name"],
            "accuracy": best_small and best_small["max_accuracy"],
            "met": bool(best_small and best_small["max_accuracy"] >= SMALL_TARGET_ACCURACY),
        },
        "cost_accuracy_within_budget": {
            "target": COST_TARGET_ACCURACY,
            "budget_per_1k": budget,
            "candidate": best_cheap and best_cheap[2],
            "accuracy": best_cheap and best_cheap[0],
            "cost": best_cheap and best_cheap[1],
            "met": bool(best_cheap and best_cheap[0] >= COST_TARGET_ACCURACY),
        },
        "best_router_above_plain_baseline": above(best_router, plain, cost["cost_axis"]),
    }


def seeing_recorded_costs(report: dict[str, Any]) -> dict[str, Any]:
    """The report as if every curve had been swept against each answer's recorded cost."""
    curves = [{**r, **r["recorded_cost"]} for r in report["candidates"] if "recorded_cost" in r]
    return {**report, "candidates": curves}


def above(router: dict[str, Any] | None, baseline: dict[str, Any] | None, axis: list[float]) -> dict[str, Any]:
    """Whether the router's frontier is at or above the baseline's at every cost where the baseline runs."""
    import numpy as np

    if router is None or baseline is None:
        return {"router": router and router["name"], "met": False,
                "note": "no router artifact in this scenario" if router is None else "no plain baseline in this run"}
    grid = np.linspace(*axis, 401)

    def step(result: dict[str, Any]) -> np.ndarray:  # best measured accuracy at or under each cost
        best = np.full(len(grid), -np.inf)
        for point in result["frontier"]:
            best = np.where(grid >= point["cost"], np.maximum(best, point["accuracy"]), best)
        return best

    mine, theirs = step(router), step(baseline)
    runs = np.isfinite(theirs)
    share = float(np.mean(mine[runs] >= theirs[runs])) if runs.any() else 0.0
    return {"router": router["name"], "share_of_cost_axis_at_or_above": share, "met": share == 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routers-dir", type=Path, default=ROOT / "var/routers",
                        help="where artifacts are found (and trained into with --train)")
    parser.add_argument("--routers", nargs="*", type=Path,
                        help="artifacts to replay (default: every artifact under --routers-dir)")
    parser.add_argument("--train", action="store_true", help="first train the pool-routed families that are missing")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="with --train")
    parser.add_argument("--retrain", action="store_true", help="with --train: train even those already there")
    parser.add_argument("--limit", type=int, help="with --train: that many train and dev questions (a quick check, "
                        "not a benchmark)")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--knn-k", type=int, default=40)
    parser.add_argument("--quick", action="store_true",
                        help=f"baselines {', '.join(QUICK_BASELINES)} only, 50 latency queries, written under var/bench/")
    parser.add_argument("--out", type=Path, help="report JSON (the plot goes beside it as .png); default "
                        "bench/results/routing.json, or var/bench/routing.smoke.json with --quick")
    args = parser.parse_args()
    baselines = QUICK_BASELINES if args.quick else BASELINES
    if args.quick:
        args.latency_queries = min(args.latency_queries, 50)
    out: Path = args.out or ROOT / ("var/bench/routing.smoke.json" if args.quick else "bench/results/routing.json")

    pool = load_dataset(None)
    training = train_missing(pool, args.families, args.routers_dir, args.retrain, args.limit) if args.train else None
    routers = args.routers if args.routers is not None else sorted(
        p for p in args.routers_dir.glob("*") if (p / "router.json").is_file())
    reports: dict[str, dict[str, Any]] = {}
    for key, scenario in SCENARIOS.items():
        data = scenario_data(pool, scenario)
        console.print(f"[bold]{key}[/]: {len(data.experts)} experts, routers {[p.name for p in routers]}")
        reports[key] = run_scenario(
            data, "test", routers, baselines, knn_k=args.knn_k, latency_queries=args.latency_queries
        )
        console.print(summary_table(reports[key], f"{key} (test)"))

    checks = {
        "expected_cost": targets(reports["small"], reports["cost"]),
        "recorded_cost": targets(*(seeing_recorded_costs(reports[s]) for s in ("small", "cost"))),
    }
    result = {
        "command": command_line(),
        "smoke": args.quick,
        "machine": machine(),
        "baselines": list(baselines),
        **({"training": training} if training is not None else {}),
        "targets": checks,
        "scenarios": reports,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(reports, out.with_suffix(".png"))
    console.print_json(json.dumps(checks))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
