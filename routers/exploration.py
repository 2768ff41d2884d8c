"""Exploration: with probability epsilon, the request goes first to an expert other than the router's choice, drawn
evenly or by the router's scores, and the log keeps the probability of the choice made (its propensity), so that a
router retrained from logged feedback can be valued off-policy (inverse propensity weighting)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Choice:
    order: list[str]  # the experts to try, the chosen one first
    propensity: float  # the probability that this policy puts `order[0]` first, for this ranking
    explored: bool


def choose(
    ranked: Sequence[str],
    scores: Sequence[float],
    epsilon: float,
    distribution: Literal["uniform", "scores"] = "uniform",
    rng: random.Random | None = None,
) -> Choice:
    """`ranked`: the router's order, best first, with each expert's score. Without exploration (epsilon 0, or one
    expert) the first is chosen with propensity 1."""
    order = list(ranked)
    others = order[1:]
    if epsilon <= 0 or not others:
        return Choice(order, 1.0, False)
    weights = _weights(list(scores[1:]), distribution)
    if (rng or random).random() >= epsilon:
        return Choice(order, 1.0 - epsilon, False)
    pick = (rng or random).choices(range(len(others)), weights=weights)[0]
    chosen = others[pick]
    return Choice([chosen, *[name for name in order if name != chosen]], epsilon * weights[pick], True)


def _weights(scores: list[float], distribution: str) -> list[float]:
    """A distribution over the non-top experts: even, or proportional to their (non-negative) scores."""
    if distribution == "scores":
        clipped = [max(0.0, s) for s in scores]
        total = sum(clipped)
        if total > 0:
            return [s / total for s in clipped]
    return [1.0 / len(scores)] * len(scores)
