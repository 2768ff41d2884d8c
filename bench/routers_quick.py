"""Train the dataset-routed families on the full pool and measure them on its TEST split.

For each family and scenario (small: three small experts; all: the seven models): full-train time,
test accuracy when always picking the expert with the highest score (no cost), and single-query
routing latency (`decide`, 200 test queries one at a time, after one warm-up call). Artifacts go to
var/routers/<family>-<scenario>/, results to bench/results/routers_quick.json.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/routers_quick.py [--families reward-distilled ...] [--scenarios small all] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from routers import load_router  # noqa: E402
from routers.quality import profiles_of  # noqa: E402
from training.dataset import load_dataset  # noqa: E402
from training.train import train_router  # noqa: E402

SCENARIOS: dict[str, list[str] | None] = {
    "small": ["Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "Phi-3-mini-4k-instruct"],
    "all": None,
}
FAMILIES = ("skill-based", "reward-distilled", "bert-domain")
RESULTS = Path("bench/results/routers_quick.json")
# Cost scenario: the best accuracy within 55% of Llama-3.1-70B's cost, by quality - lam * USD per 1k queries.
REFERENCE = "Meta-Llama-3_1-70B-Instruct"
BUDGET = 0.55
LAMBDAS = tuple(np.round(np.arange(0.0, 3.01, 0.05), 2))


def measure(family: str, scenario: str, previous: dict[str, float] | None) -> dict[str, float]:
    """Train (unless `previous` results are given: reuse their artifact and training time) and measure."""
    data = load_dataset(None)
    if SCENARIOS[scenario] is not None:
        data = data.with_experts(SCENARIOS[scenario])
    out = Path("var/routers") / f"{family}-{scenario}"
    train_seconds = previous["train_seconds"] if previous else train_router(family, out, dataset=data).seconds
    router = load_router(out, profiles_of(data))
    test, dev = data.of_split("test"), data.of_split("dev")
    scores = router.score(test.queries.tolist())
    picks = scores.argmax(axis=1)
    mean_cost = np.array(router.manifest.params["mean_cost"])  # USD per query per expert, from train
    frontier = cost_aware(router.score(dev.queries.tolist()), dev, scores, test, data.experts, mean_cost)
    latencies = []
    router.decide([{"role": "user", "content": test.queries[0]}])
    for query in test.queries[:200]:
        started = time.perf_counter()
        router.decide([{"role": "user", "content": query}])
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "train_seconds": round(train_seconds, 1),
        "test_accuracy": round(float(test.scores[np.arange(len(test)), picks].mean()), 4),
        "test_best_single": round(float(test.scores.mean(axis=0).max()), 4),
        "test_cost_per_1k": round(float(test.costs[np.arange(len(test)), picks].mean() * 1000), 4),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        **frontier,
        **{key: round(value, 4) for key, value in (router.manifest.metrics if router.manifest else {}).items()},
    }


def cost_aware(
    dev_scores: np.ndarray, dev, test_scores: np.ndarray, test, experts: tuple[str, ...], mean_cost: np.ndarray
) -> dict[str, float]:
    """argmax(quality - lam * mean_cost), lam the most accurate on dev within BUDGET of the reference's dev cost."""
    reference = experts.index(REFERENCE) if REFERENCE in experts else None
    if reference is None:
        return {}

    def outcome(scores: np.ndarray, data, lam: float) -> tuple[float, float]:
        picks = np.argmax(scores - lam * mean_cost * 1000, axis=1)
        rows = np.arange(len(data))
        return float(data.scores[rows, picks].mean()), float(data.costs[rows, picks].mean())

    budget = BUDGET * dev.costs[:, reference].mean()
    affordable = [lam for lam in LAMBDAS if outcome(dev_scores, dev, lam)[1] <= budget]
    if not affordable:
        return {}
    lam = max(affordable, key=lambda lam: outcome(dev_scores, dev, lam)[0])
    accuracy, cost = outcome(test_scores, test, lam)
    return {"cost_lambda": lam, "cost_test_accuracy": round(accuracy, 4), "cost_test_per_1k": round(cost * 1000, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--reuse", action="store_true", help="re-measure the saved artifacts, do not train")
    args = parser.parse_args()
    for family in args.families:
        for scenario in args.scenarios:
            key = f"{family}-{scenario}"
            row = measure(family, scenario, read_results()[key] if args.reuse else None)
            print(f"{key}: {json.dumps(row)}", flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({**read_results(), key: row}, indent=2) + "\n")  # other runs may have written


def read_results() -> dict[str, dict[str, float]]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


if __name__ == "__main__":
    main()
