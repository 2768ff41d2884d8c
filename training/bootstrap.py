"""How much of a difference between two candidates on one split is that split's luck: a paired bootstrap.

Both candidates' choices are fixed per lam (their sweep, training/evaluate.py). Each resample draws the split's
queries with replacement, the same draw for both candidates (paired: a query both get right or wrong moves neither
difference), and reads the two curves' metrics off it as `curve_metrics` reads them off the whole split, the best
single expert and the cost axis taken on the resample too. The interval is the percentile interval of the
differences. On a test split of a few hundred queries, a gap of a few questions is usually inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routers.dataset import RoutingDataset
from routers.frontier import Setting, accuracy_at, area_under, envelope

RESAMPLES = 1000
LEVEL = 0.95
METRICS = ("auc", "accuracy_at_half_cost")


@dataclass(frozen=True)
class Outcomes:
    """One candidate's sweep, query by query: the score [L, n] and recorded cost [L, n] of its choice per lam."""

    lambdas: np.ndarray
    scores: np.ndarray
    costs: np.ndarray

    @classmethod
    def of(cls, chosen: np.ndarray, data: RoutingDataset, lambdas: Sequence[float]) -> Outcomes:
        """From the sweep's `routers.frontier.choices` [L, n] on `data`."""
        rows = np.arange(len(data))
        return cls(np.asarray(lambdas, dtype=np.float64), data.scores[rows, chosen], data.costs[rows, chosen])


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n]: how often each query is drawn in each resample."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)


def metrics_per_resample(outcomes: Outcomes, data: RoutingDataset, counts: np.ndarray) -> np.ndarray:
    """[resamples, len(METRICS)] (NaN where the metric is undefined, e.g. half the best cost out of reach)."""
    n = len(data)
    accuracy, cost = outcomes.scores @ counts.T / n, outcomes.costs @ counts.T * 1000 / n  # [L, B]
    single_accuracy, single_cost = counts @ data.scores / n, counts @ data.costs * 1000 / n  # [B, m]
    best = single_accuracy.argmax(axis=1)
    result = np.full((len(counts), len(METRICS)), np.nan)
    for b in range(len(counts)):
        points = zip(outcomes.lambdas, cost[:, b], accuracy[:, b], strict=True)
        hull = envelope([Setting(float(lam), float(c), float(a)) for lam, c, a in points])
        result[b, 0] = area_under(hull, float(single_cost[b].min()), float(single_cost[b].max()))
        half = accuracy_at(hull, 0.5 * float(single_cost[b, best[b]]))
        result[b, 1] = np.nan if half is None else half
    return result


def paired_leads(
    outcomes: Mapping[str, Outcomes], leader: str, data: RoutingDataset, *, resamples: int = RESAMPLES
) -> dict[str, dict[str, Any]]:
    """For every candidate but `leader`, per metric, `leader`'s lead over it (leader minus it) resample by resample,
    on one draw of resamples for all: its mean and its LEVEL percentile interval, over the resamples where both
    are defined. The leader's metrics are read once."""
    counts = resample_counts(len(data), resamples)
    ahead = metrics_per_resample(outcomes[leader], data, counts)
    return {
        name: {
            "resamples": resamples,
            "level": LEVEL,
            **summary(ahead - metrics_per_resample(other, data, counts)),
        }
        for name, other in outcomes.items()
        if name != leader
    }


def summary(lead: np.ndarray) -> dict[str, dict[str, Any] | None]:
    """Per metric of `lead` [resamples, metric], its mean and LEVEL percentile interval over the resamples where
    it is defined; None where it never is."""
    tail = 100 * (1 - LEVEL) / 2
    result: dict[str, dict[str, Any] | None] = {}
    for index, metric in enumerate(METRICS):
        defined = lead[:, index][~np.isnan(lead[:, index])]
        result[metric] = (
            {"mean": float(defined.mean()), "interval": [float(np.percentile(defined, q)) for q in (tail, 100 - tail)]}
            if len(defined)
            else None
        )
    return result
