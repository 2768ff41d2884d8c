"""Routing quality and cost on every dataset, with the same defaults: each router family and the plain baselines
trained on a dataset's train split (choices on dev), replayed on its test split.

Datasets (`DATASETS`): the MMLU-Pro pool (`../shared/data/mmlu_pro_pool`; scenarios `small`, its three small
experts, and `all`, its seven) and the ZeroEval pool (`../shared/data/zeroeval_pool`, 28 models); `--data FILE.jsonl`
adds a user's own routing JSONL (training/dataset.py's format). One evaluator replays every candidate
(training/evaluate.py, the same cost policy as the gateway, each expert's cost predicted per query, never read from
the recorded answer), and the agreement cascade (training/cascade.py) is replayed beside the routers on datasets
that record answers.

`--train` first trains every family in `FAMILIES` for each dataset and scenario into
var/routers/bench/<dataset>-<scenario>/<family>/ (those missing; all with `--retrain`), recording each training's
seconds. The targets (`bench/routing_targets.py`) are checked on measured settings, not interpolated ones.
Writes bench/results/routing.json (with the command that produced it) and bench/results/routing.png.

    python -m bench.routing --train            # train what is missing, then evaluate
    python -m bench.routing --data my.jsonl    # a user's own data beside the shipped datasets
    python -m bench.routing --quick            # no embedding baselines, 50 latency queries -> var/bench/
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import ROOT, SMALL_EXPERTS, command_line, machine
from bench.routing_targets import check_targets, cross_dataset_table
from routers.dataset import RoutingDataset
from training.baselines import BASELINES
from training.dataset import load_dataset
from training.evaluate import run_scenario, summary_table
from training.evaluation_plot import plot

console = Console(width=160)
DATA = ROOT.parent / "shared" / "data"
# Every family that routes between the experts a dataset scores; the first is the default router, the one the
# targets hold to (ensemble: reward-distilled and skill-based mixed by their dev error, routers/ensemble.py).
FAMILIES = ("ensemble", "reward-distilled", "skill-based", "bert-domain")
QUICK_BASELINES = ("random", "single", "oracle", "true-label")  # logistic and knn embed every question first


@dataclass(frozen=True)
class Benchmark:
    """One dataset: where it is, its scenarios (name -> the experts kept, None for all) and the budget targets
    (accuracy as a share of the best single expert's, cost as a share of its cost) each scenario is held to."""

    source: Path | None  # None: the MMLU-Pro pool
    scenarios: dict[str, tuple[str, ...] | None]
    budgets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


DATASETS: dict[str, Benchmark] = {
    "mmlu-pro": Benchmark(None, {"small": SMALL_EXPERTS, "all": None}, {"all": [(0.95, 0.60)]}),
    "zeroeval": Benchmark(
        DATA / "zeroeval_pool" / "routing.jsonl", {"all": None}, {"all": [(0.95, 0.15), (1.0, 0.50)]}
    ),
}


def scenario_data(data: RoutingDataset, experts: tuple[str, ...] | None) -> RoutingDataset:
    return data.with_experts(list(experts)) if experts else data


def train_missing(
    key: str, data: RoutingDataset, directory: Path, families: list[str], retrain: bool, limit: int | None
) -> dict[str, Any]:
    """Train each family for one dataset scenario into `directory/<family>` unless already there; what was done
    per family, with the seconds it took."""
    from training.train import train_router

    done: dict[str, Any] = {}
    for family in families:
        out = directory / family
        if (out / "router.json").is_file() and not retrain:
            done[family] = {"trained": False, "note": "artifact already there"}
            continue
        console.print(f"training {key} {family} ({len(data.experts)} experts)")
        result = train_router(family, out, dataset=data, limit=limit)
        done[family] = {"trained": True, "seconds": round(result.seconds, 1), **({"limit": limit} if limit else {})}
        console.print(f"  {json.dumps(done[family])}")
    return done


def with_cascade(report: dict[str, Any], data: RoutingDataset, default_dir: Path) -> dict[str, Any]:
    """The scenario's report with the agreement cascade over the default router added as a candidate, when the data
    records answers."""
    if data.answers is None or not (default_dir / "router.json").is_file():
        return report
    from training.cascade import cascade_candidate

    report["candidates"].append(cascade_candidate(default_dir, data, report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--routers-dir",
        type=Path,
        default=ROOT / "var/routers/bench",
        help="where artifacts are found (and trained into with --train): <dataset>-<scenario>/<family>",
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--data", nargs="*", type=Path, default=[], help="routing JSONL files to add")
    parser.add_argument("--train", action="store_true", help="first train the families that are missing")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="with --train")
    parser.add_argument("--retrain", action="store_true", help="with --train: train even those already there")
    parser.add_argument(
        "--limit", type=int, help="with --train: that many train and dev queries (a quick check, not a benchmark)"
    )
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"baselines {', '.join(QUICK_BASELINES)} only, 50 latency queries, written under var/bench/",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="report JSON (the plot goes beside it as .png); default "
        "bench/results/routing.json, or var/bench/routing.smoke.json with --quick",
    )
    args = parser.parse_args()
    baselines = QUICK_BASELINES if args.quick else BASELINES
    if args.quick:
        args.latency_queries = min(args.latency_queries, 50)
    out: Path = args.out or ROOT / ("var/bench/routing.smoke.json" if args.quick else "bench/results/routing.json")

    benchmarks = {name: DATASETS[name] for name in args.datasets}
    benchmarks |= {path.stem: Benchmark(path, {"all": None}) for path in args.data}
    reports: dict[str, dict[str, Any]] = {}
    budgets: dict[str, list[tuple[float, float]]] = {}
    training: dict[str, Any] = {}
    for name, benchmark in benchmarks.items():
        full = load_dataset(benchmark.source)
        for scenario, experts in benchmark.scenarios.items():
            key = f"{name}-{scenario}"
            budgets[key] = benchmark.budgets.get(scenario, [])
            data, directory = scenario_data(full, experts), args.routers_dir / key
            if args.train:
                training[key] = train_missing(key, data, directory, args.families, args.retrain, args.limit)
            routers = sorted(p for p in directory.glob("*") if (p / "router.json").is_file())
            console.print(f"[bold]{key}[/]: {len(data.experts)} experts, routers {[p.name for p in routers]}")
            report = run_scenario(
                data, "test", routers, baselines, latency_queries=args.latency_queries, paired_with=FAMILIES[0]
            )
            reports[key] = with_cascade(report, data, directory / FAMILIES[0])
            console.print(summary_table(reports[key], f"{key} (test)"))

    checks = {key: check_targets(report, FAMILIES[0], budgets[key]) for key, report in reports.items()}
    result = {
        "command": command_line(),
        "smoke": args.quick,
        "machine": machine(),
        "baselines": list(baselines),
        "default_router": FAMILIES[0],
        **({"training": training} if training else {}),
        "targets": checks,
        "table": cross_dataset_table(reports, FAMILIES[0]),
        "scenarios": reports,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(reports, out.with_suffix(".png"))
    console.print_json(json.dumps(checks))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
