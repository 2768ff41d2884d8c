"""The paired bootstrap: on the whole split once it reads the metrics `evaluate` reports; a clear lead has an
interval above 0, a lead of one query does not, and `evaluate(paired_with=...)` reports the lead on every other
curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from routers.dataset import RoutingDataset
from routers.frontier import choices
from routers.policy import lambda_grid
from training.bootstrap import METRICS, Outcomes, metrics_per_resample, paired_leads
from training.evaluate import evaluate

N, M = 400, 4


def made_up(seed: int = 0) -> RoutingDataset:
    rng = np.random.default_rng(seed)
    skill = np.array([0.3, 0.5, 0.65, 0.8])  # dearer experts are right more often
    return RoutingDataset(
        queries=np.array([f"q{i}" for i in range(N)], dtype=object),
        experts=tuple(f"e{j}" for j in range(M)),
        scores=(rng.random((N, M)) < skill).astype(np.float64),
        costs=np.tile([1e-4, 3e-4, 1e-3, 4e-3], (N, 1)) * rng.uniform(0.5, 1.5, (N, M)),
        tags=((),) * N,
        domains=np.full(N, "", dtype=object),
        split=np.full(N, "test"),
    )


@dataclass
class Fixed:
    """A candidate whose predictions are given."""

    name: str
    quality: np.ndarray
    experts: tuple[str, ...] = tuple(f"e{j}" for j in range(M))
    kind: str = "router"
    fixed_lambda: float | None = None

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        return data.costs.mean(axis=0)

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return self.quality


def outcomes(candidate: Fixed, data: RoutingDataset) -> Outcomes:
    cost = candidate.expected_cost(data)
    lambdas = lambda_grid(candidate.quality, cost)
    return Outcomes.of(choices(candidate.quality, cost, lambdas), data, lambdas)


def lead(leader: Fixed, other: Fixed, data: RoutingDataset, resamples: int) -> dict:
    pair = {"leader": outcomes(leader, data), "other": outcomes(other, data)}
    return paired_leads(pair, "leader", data, resamples=resamples)["other"]


def noisy(data: RoutingDataset, noise: float, seed: int) -> np.ndarray:
    return np.clip(data.scores + np.random.default_rng(seed).normal(0, noise, data.scores.shape), 0, 1)


def test_the_whole_split_once_reads_what_evaluate_reports() -> None:
    data = made_up()
    candidate = Fixed("r", noisy(data, 0.8, 1))
    [report] = evaluate([candidate], data, latency_queries=0)["candidates"]
    once = metrics_per_resample(outcomes(candidate, data), data, np.ones((1, N), dtype=np.int64))[0]
    assert once == pytest.approx([report[metric] for metric in METRICS], abs=1e-9)


def test_a_clear_lead_is_outside_the_interval_and_one_query_is_not() -> None:
    data = made_up()
    good, poor = Fixed("good", noisy(data, 0.3, 1)), Fixed("poor", noisy(data, 3.0, 2))
    clear = lead(good, poor, data, 200)
    assert all(clear[metric]["interval"][0] > 0 for metric in METRICS)

    # The same predictions but for one query, where the second candidate is told the answer outright.
    told = good.quality.copy()
    told[0] = data.scores[0]
    one_query = lead(good, Fixed("told", told), data, 200)
    for metric in METRICS:
        low, high = one_query[metric]["interval"]
        assert low <= 0 <= high and high - low < 0.02

    same = lead(good, good, data, 50)
    assert all(same[metric] == {"mean": 0.0, "interval": [0.0, 0.0]} for metric in METRICS)


def test_evaluate_pairs_every_other_curve_with_the_named_candidate() -> None:
    data = made_up()
    candidates = [
        Fixed("good", noisy(data, 0.3, 1)),
        Fixed("poor", noisy(data, 3.0, 2)),
        Fixed("pinned", noisy(data, 0.3, 3), fixed_lambda=0.0),  # one point: no curve to pair
    ]
    report = {r["name"]: r for r in evaluate(candidates, data, latency_queries=0, paired_with="good")["candidates"]}
    assert "paired" not in report["good"] and "paired" not in report["pinned"]
    paired = report["poor"]["paired"]
    assert paired["leader"] == "good" and paired["resamples"] == 1000 and paired["level"] == 0.95
    low, high = paired["auc"]["interval"]
    assert 0 < low <= report["good"]["auc"] - report["poor"]["auc"] <= high
