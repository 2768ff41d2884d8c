"""How many fully scored questions the learning benchmark's gap is worth: the retraining family's learning curve.

bench/learning.py measures recovery of the AUC gap between a router trained on 300 fully scored questions and one
trained on 6,300. A logged request scores one expert: with exploration epsilon drawn uniformly over the m - 1 experts
the starting router does not pick, each of those experts is revealed on about 6,000 * epsilon / (m - 1) logged
questions (300 at the benchmark's 0.3 with seven experts), the experts the start picks on many more. This fits the
family with full information on the 300 starting questions plus the first k streamed ones, k from 0 to 6,000, for
the same draws of the questions as bench/learning_ceiling.py, and replays each on the pool's test split: the recovery
a fully scored 300 + k would give. Beside it, per epsilon, how many logged questions reveal each expert (the
exploration replayed as bench/learning_ceiling.py replays it).

    python -m bench.learning_curve   # 3 draws -> bench/results/learning_curve.{json,png}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ROOT, command_line, console, machine
from bench.learning import FAMILY
from bench.learning_ceiling import (
    EPSILONS,
    START,
    STREAM,
    aucs_on_test,
    fit,
    full_information,
    recovery,
    revealed,
)
from bench.learning_data import plan
from routers import Router
from routers.dataset import RoutingDataset
from training.dataset import from_pool
from training.pool import load_pool

STREAMED = (0, 300, 600, 1500, 3000, STREAM)  # fully scored streamed questions added to the start's


def run_draw(data: RoutingDataset, pool: Any, draw: int, work: Path) -> dict[str, Any]:
    """One draw of the questions (bench/learning_ceiling.py's for the same draw): the family fitted on the start plus
    each prefix of the stream, every expert scored, and what each epsilon's exploration would reveal per expert."""
    rows = plan(pool, START, STREAM, seed=draw)
    directories = {k: work / f"{draw}-{k}" for k in STREAMED}

    def fit_streamed(k: int) -> Router:
        console.print(f"draw {draw}: full information on {START} + {k}")
        return fit(full_information(data, rows, np.concatenate([rows.start, rows.stream[:k]])), directories[k])

    start = fit_streamed(0)
    for k in STREAMED[1:]:
        fit_streamed(k)
    auc = aucs_on_test(data, directories)
    start_quality = start.score(data.subset(rows.stream).queries.tolist())
    revealed_rows = {
        str(epsilon): np.bincount(
            revealed(start_quality, epsilon, np.random.default_rng(1000 + draw)), minlength=len(data.experts)
        ).tolist()
        for epsilon in EPSILONS
    }
    return {
        "draw": draw,
        "by_streamed": {str(k): {"auc": auc[k], "recovery": recovery(auc[k], auc[0], auc[STREAM])} for k in auc},
        "revealed_per_expert": revealed_rows,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    streamed = [k for k in STREAMED if k > 0]
    for draw in results["draws"]:
        ax.plot(streamed, [draw["by_streamed"][str(k)]["recovery"] for k in streamed], color="C0", alpha=0.35,
                marker="o", label="one draw" if draw["draw"] == 0 else None)
    ax.plot(streamed, [results["mean_recovery"][str(k)] for k in streamed], color="C0", linewidth=2.5, label="mean")
    for i, (epsilon, share) in enumerate(results["median_revealed_other"].items()):
        ax.axvline(share, color=f"C{i + 1}", linestyle=":",
                   label=f"epsilon {epsilon}: logged questions revealing a non-top expert (median)")
    ax.axhline(0.5, color="grey", linestyle="--", label="issue 15's target")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"fully scored streamed questions added to the {START} that start")
    ax.set_ylabel("recovery of the AUC gap")
    ax.set_title(f"{FAMILY}: what the gap is worth in fully scored questions ({len(results['draws'])} draws)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args(argv)
    out_dir = ROOT / ("bench/results" if args.draws >= 3 else "var/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = load_pool()
    data = from_pool(pool)
    with tempfile.TemporaryDirectory(prefix="moe-learning-curve-") as work:
        draws = [run_draw(data, pool, draw, Path(work)) for draw in range(args.draws)]

    def others(draw: dict[str, Any], epsilon: str) -> list[int]:
        """Logged questions revealing each expert but the one revealed most (the start's usual pick)."""
        counts = sorted(draw["revealed_per_expert"][epsilon])
        return counts[:-1]

    results = {
        "command": command_line(),
        "machine": machine(),
        "settings": {"family": FAMILY, "start_questions": START, "streamed": list(STREAMED), "epsilons": EPSILONS},
        "draws": draws,
        "mean_recovery": {
            str(k): float(np.mean([d["by_streamed"][str(k)]["recovery"] for d in draws])) for k in STREAMED
        },
        "median_revealed_other": {
            str(epsilon): float(np.median([n for d in draws for n in others(d, str(epsilon))])) for epsilon in EPSILONS
        },
    }
    (out_dir / "learning_curve.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out_dir / "learning_curve.png")
    console.print(json.dumps({k: results[k] for k in ("mean_recovery", "median_revealed_other")}))
    console.print(f"wrote {out_dir / 'learning_curve.json'} and {out_dir / 'learning_curve.png'}")


if __name__ == "__main__":
    main()
