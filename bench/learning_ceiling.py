"""What the learning benchmark's log can teach at best: its bandit feedback replayed offline, without the gateway.

bench/learning.py sends 6,000 questions through the gateway, each answered by the starting router's pick or, with
probability epsilon, by another expert drawn uniformly, and retrains from the one reward each answer reveals. This
replays that logging policy on the pool's recorded scores for several draws (the questions, the exploration and the
log's split drawn anew each time), with the benchmark's epsilon and with twice it, and trains the retraining family
on what it reveals, four ways:

- `all_rows`: every logged row trains, only the revealed reward known;
- `all_rows_fill`: the same, the unknown rewards filled with the starting router's predictions, each counting
  `PREDICTED_WEIGHT` of an observed one (as `moe router retrain` does);
- `retrain_split_fill`: as `moe router retrain` splits the log (held-out rows for the off-policy value, a dev share
  with its one reward each), with the fill;
- `retrain_refit_fill`: the same with the held-out rows back in train once they have valued the fit, as
  scikit-learn's searches refit: what a retrain that refitted would serve. `moe router retrain` does not refit: in
  the committed run this lost ground on average at epsilon 0.3 and gained little at 0.6, each draw moving by more
  than the mean.

Every router here tunes on the pool's whole dev split with full information, as in bench/learning.py. Each is replayed
on the test split; recovery = (AUC - start's) / (full information's - start's), per draw and on average. The
starting and full-information routers are the benchmark's own (same questions, same family), so the first draw's
figures for them equal bench/learning.py's.

    python -m bench.learning_ceiling                # 3 draws, epsilon 0.3 and 0.6 -> bench/results/learning_ceiling.*
    python -m bench.learning_ceiling --epsilon 0.9  # other settings -> var/bench/
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench.harness import ROOT, command_line, console, machine
from bench.learning import FAMILY
from bench.learning_data import Plan, plan
from routers import Router, router_class
from routers.dataset import RoutingDataset
from routers.quality import profiles_of
from training.dataset import from_pool
from training.evaluate import run_scenario
from training.log_data import DEV_SHARE, concat, predictions, split_of, with_predicted
from training.pool import load_pool
from training.retrain import PREDICTED_WEIGHT, RetrainRequest

START, STREAM = 300, 6000  # bench/learning.py's questions: the start's, fully scored, and the logged ones
WAYS = ("all_rows", "all_rows_fill", "retrain_split_fill", "retrain_refit_fill")
EPSILONS = (0.3, 0.6)  # bench/learning.py's exploration share, and twice it
Key = TypeVar("Key")


def revealed(start_quality: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """The expert that answers each logged question: the start's pick, or with probability epsilon another one drawn
    uniformly (the gateway's `exploration: {epsilon, distribution: uniform}`)."""
    top = start_quality.argmax(axis=1)
    others = rng.integers(0, start_quality.shape[1] - 1, len(top))
    other = others + (others >= top)  # uniform over the experts other than the top one
    return np.where(rng.random(len(top)) < epsilon, other, top)


def draw_datasets(
    data: RoutingDataset, rows: Plan, start: Router, epsilon: float, rng: np.random.Generator
) -> dict[str, RoutingDataset]:
    """Per way, the train and dev rows a retrain would fit on: the start questions fully scored, the logged ones with
    one reward each, the pool's dev split fully scored."""
    logged = data.subset(rows.stream)
    answered = revealed(start.score(logged.queries.tolist()), epsilon, rng)
    scores = np.full(logged.scores.shape, np.nan)
    scores[np.arange(len(logged)), answered] = logged.scores[np.arange(len(logged)), answered]
    salt = int(rng.integers(2**32))  # the retrain splits by decision id: made-up ids, one set per draw
    log_split = np.array([split_of(f"{salt}-{i}", RetrainRequest.holdout) for i in range(len(logged))])
    start_rows, dev_rows = data.subset(rows.start), data.subset(rows.dev)

    def mixed(split: np.ndarray) -> RoutingDataset:
        log = replace(logged, scores=scores, split=split).subset(split != "holdout")
        return concat([as_split(start_rows, "train"), log, as_split(dev_rows, "dev")])

    every = mixed(np.full(len(logged), "train"))
    split = mixed(log_split)
    refit = mixed(np.where(log_split == "holdout", "train", log_split))
    return {
        "all_rows": every,
        **{way: with_predicted(mix, predictions(start, mix), PREDICTED_WEIGHT)
           for way, mix in (("all_rows_fill", every), ("retrain_split_fill", split), ("retrain_refit_fill", refit))},
    }


def as_split(data: RoutingDataset, split: str) -> RoutingDataset:
    """Every row of `data` in one split."""
    return replace(data, split=np.full(len(data), split))


def fit(data: RoutingDataset, out: Path) -> Router:
    """The family fitted on `data`, saved to `out` for the replay."""
    router = router_class(FAMILY)(profiles_of(data)).fit(data.of_split("train"), data.of_split("dev"))
    router.save(out)
    return router


def full_information(data: RoutingDataset, rows: Plan, train_rows: np.ndarray) -> RoutingDataset:
    """`train_rows` to train on and the plan's dev rows to tune on, every expert's score known."""
    return concat([as_split(data.subset(train_rows), "train"), as_split(data.subset(rows.dev), "dev")])


def aucs_on_test(data: RoutingDataset, directories: Mapping[Key, Path]) -> dict[Key, float]:
    """Each router saved in `directories` replayed on the test split: its AUC, under the same key."""
    report = run_scenario(data, "test", list(directories.values()), [], latency_queries=0)
    by_directory = {result["name"]: result["auc"] for result in report["candidates"]}
    return {key: by_directory[directory.name] for key, directory in directories.items()}


def recovery(auc: float, start: float, full: float) -> float | None:
    """The share of the gap from the start's AUC to full information's that `auc` closes; None without a gap."""
    return (auc - start) / (full - start) if full > start else None


def run_draw(
    data: RoutingDataset, pool: Any, draw: int, epsilons: Sequence[float], work: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """One draw of the questions; per epsilon, one draw of the exploration and of the log's split (the same seed for
    each epsilon, so a run with more of them repeats the figures of one with fewer)."""
    rows = plan(pool, START, STREAM, seed=draw)  # bench/learning.py's questions for its seed
    say(f"draw {draw}: start and full information")
    directories = {"start": work / f"{draw}-start", "full_information": work / f"{draw}-full"}
    start = fit(full_information(data, rows, rows.start), directories["start"])
    fit(full_information(data, rows, np.concatenate([rows.start, rows.stream])), directories["full_information"])
    for epsilon in epsilons:
        mixes = draw_datasets(data, rows, start, epsilon, np.random.default_rng(1000 + draw))
        for way, mix in mixes.items():
            say(f"draw {draw}, epsilon {epsilon}: {way}")
            directories[f"{epsilon}/{way}"] = work / f"{draw}-{epsilon}-{way}"
            fit(mix, directories[f"{epsilon}/{way}"])
    auc = aucs_on_test(data, directories)

    def way_figures(epsilon: float, way: str) -> dict[str, float | None]:
        mine = auc[f"{epsilon}/{way}"]
        return {"auc": mine, "recovery": recovery(mine, auc["start"], auc["full_information"])}

    return {
        "draw": draw,
        "start_auc": auc["start"],
        "full_information_auc": auc["full_information"],
        "by_epsilon": {str(epsilon): {way: way_figures(epsilon, way) for way in WAYS} for epsilon in epsilons},
    }


def mean_recovery(draws: Sequence[dict[str, Any]], epsilon: str) -> dict[str, float]:
    return {way: float(np.mean([d["by_epsilon"][epsilon][way]["recovery"] for d in draws])) for way in WAYS}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    epsilons = list(results["mean_recovery"])
    for k, epsilon in enumerate(epsilons):
        colour = f"C{k}"  # matplotlib's colour cycle
        for i, way in enumerate(WAYS):
            x = i + (k - (len(epsilons) - 1) / 2) * 0.25
            values = [d["by_epsilon"][epsilon][way]["recovery"] for d in results["draws"]]
            ax.scatter(
                [x] * len(values),
                values,
                color=colour,
                alpha=0.5,
                label=f"epsilon {epsilon}: one draw" if i == 0 else None,
            )
            ax.scatter(
                [x],
                [results["mean_recovery"][epsilon][way]],
                color=colour,
                marker="_",
                s=500,
                label=f"epsilon {epsilon}: mean" if i == 0 else None,
            )
    ax.axhline(0.5, color="grey", linestyle="--", label="issue 15's target")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(WAYS)), WAYS, fontsize=8)
    ax.set_ylabel("recovery of the AUC gap at 6,000 logged")
    ax.set_title(f"The learning benchmark's log replayed offline ({FAMILY}, {len(results['draws'])} draws)")
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument(
        "--epsilon", type=float, nargs="+", default=list(EPSILONS), help="exploration shares (bench/learning.py's: 0.3)"
    )
    args = parser.parse_args(argv)
    full_run = args.draws >= 3 and tuple(args.epsilon) == EPSILONS
    out_dir = ROOT / ("bench/results" if full_run else "var/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = load_pool()
    data = from_pool(pool)
    with tempfile.TemporaryDirectory(prefix="moe-learning-ceiling-") as work:
        draws = [run_draw(data, pool, draw, args.epsilon, Path(work), console.print) for draw in range(args.draws)]
    results = {
        "command": command_line(),
        "machine": machine(),
        "settings": {
            "family": FAMILY,
            "start_questions": 300,
            "logged_questions": 6000,
            "epsilons": args.epsilon,
            "distribution": "uniform",
            "predicted_weight": PREDICTED_WEIGHT,
            "holdout": RetrainRequest.holdout,
            "dev_share": DEV_SHARE,
        },
        "draws": draws,
        "mean_recovery": {str(epsilon): mean_recovery(draws, str(epsilon)) for epsilon in args.epsilon},
    }
    (out_dir / "learning_ceiling.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out_dir / "learning_ceiling.png")
    console.print(json.dumps({"mean_recovery": results["mean_recovery"]}))
    console.print(f"wrote {out_dir / 'learning_ceiling.json'} and {out_dir / 'learning_ceiling.png'}")


if __name__ == "__main__":
    main()
