"""Cost-quality curves of a router's predictions: the policy's choices swept over lam, scored with the recorded
answers, and what is read off them (training/evaluate.py describes each; a family choosing its capacity on dev reads
the same area under the curve the benchmark judges it by)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routers.dataset import RoutingDataset
from routers.policy import CostPolicy


@dataclass(frozen=True)
class Setting:
    lam: float
    cost: float  # USD per 1k queries
    accuracy: float

    def to_json(self) -> dict[str, float]:
        return {"lambda": self.lam, "cost": self.cost, "accuracy": self.accuracy}


def choices(quality: np.ndarray, expected_cost: np.ndarray, lambdas: Sequence[float]) -> np.ndarray:
    """int [L, n]: the cost policy's choice per lam and query."""
    return np.stack([CostPolicy(lam=float(lam)).choose(quality, expected_cost) for lam in lambdas])


def sweep(
    quality: np.ndarray, expected_cost: np.ndarray, data: RoutingDataset, lambdas: Sequence[float]
) -> list[Setting]:
    """One setting per lam, identical (cost, accuracy) points kept once (the smallest lam)."""
    return settings_of(choices(quality, expected_cost, lambdas), data, lambdas)


def settings_of(chosen: np.ndarray, data: RoutingDataset, lambdas: Sequence[float]) -> list[Setting]:
    """`sweep` from its `choices`."""
    rows = np.arange(len(data))
    seen: dict[tuple[float, float], Setting] = {}
    for lam, picks in zip(lambdas, chosen, strict=True):
        point = (float(data.costs[rows, picks].mean() * 1000), float(data.scores[rows, picks].mean()))
        seen.setdefault((round(point[0], 12), round(point[1], 12)), Setting(float(lam), *point))
    return sorted(seen.values(), key=lambda s: (s.cost, -s.accuracy))


def frontier(settings: Sequence[Setting]) -> list[Setting]:
    """The non-dominated settings, by increasing cost (and so increasing accuracy)."""
    kept: list[Setting] = []
    for setting in sorted(settings, key=lambda s: (s.cost, -s.accuracy)):
        if not kept or setting.accuracy > kept[-1].accuracy:
            kept.append(setting)
    return kept


def envelope(settings: Sequence[Setting]) -> np.ndarray:
    """Upper concave hull of the frontier, shape [k, 2] of (cost, accuracy), increasing in both."""
    hull: list[tuple[float, float]] = []
    for point in ((s.cost, s.accuracy) for s in frontier(settings)):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()  # the middle point lies on or under the chord: a random mix does at least as well
        hull.append(point)
    return np.array(hull, dtype=np.float64).reshape(-1, 2)


def _cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def accuracy_at(hull: np.ndarray, cost: float) -> float | None:
    if not len(hull) or cost < hull[0, 0]:
        return None
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


def cost_at(hull: np.ndarray, accuracy: float) -> float | None:
    if not len(hull) or accuracy > hull[-1, 1]:
        return None
    return float(np.interp(accuracy, hull[:, 1], hull[:, 0]))


def area_under(hull: np.ndarray, low: float, high: float, samples: int = 2001) -> float:
    """Mean envelope accuracy over [low, high] (0 where the candidate cannot run that cheaply)."""
    if high <= low:
        return float(accuracy_at(hull, high) or 0.0)
    grid = np.linspace(low, high, samples)
    values = np.where(grid >= hull[0, 0], np.interp(grid, hull[:, 0], hull[:, 1]), 0.0)
    return float(np.trapezoid(values, grid) / (high - low))
