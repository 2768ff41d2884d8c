"""Off-policy value of a deterministic routing policy from logged bandit feedback.

Each logged request i was sent to expert a_i with probability p_i (its propensity: the serving policy with its
exploration) and earned reward r_i; a target policy (a candidate router, or the active version) would send it to
t_i. Two estimators of the target's expected reward, with w_i = 1{t_i = a_i} / p_i:

- SNIPS (self-normalised inverse propensity scoring): sum(w r) / sum(w). Only the requests where the target agrees
  with the logged choice count, reweighted for how rarely the logging policy made that choice. Undefined (None)
  when the target agrees with no logged choice.
- DR (doubly robust): mean(q(x, t) + w (r - q(x, a))), where q is a reward model (a router's predicted quality).
  Unbiased if either the propensities or the reward model are right; the reward model fills in the requests where
  the target disagrees, the weighted residual corrects its error where it agrees.

Without exploration every propensity is 1 and SNIPS is the mean reward where the target happens to agree, which
is biased wherever agreement depends on the query: an exploration share (virtual_models: exploration) is what
makes the estimate honest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Estimate:
    snips: float | None
    dr: float
    dr_stderr: float  # standard error of the DR mean
    matched: int  # requests where the target agrees with the logged choice
    n: int
    per_request: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))  # DR terms

    def metrics(self, prefix: str) -> dict[str, float]:
        """The estimate as manifest metrics: `<prefix>_snips` (absent when undefined), `_dr`, `_dr_stderr`,
        `_matched`."""
        metrics = {
            f"{prefix}_dr": self.dr, f"{prefix}_dr_stderr": self.dr_stderr, f"{prefix}_matched": float(self.matched)
        }
        if self.snips is not None:
            metrics[f"{prefix}_snips"] = self.snips
        return metrics


def estimate(
    target: np.ndarray, logged: np.ndarray, propensity: np.ndarray, reward: np.ndarray, predicted: np.ndarray
) -> Estimate:
    """`target`, `logged` [n]: expert columns; `propensity`, `reward` [n]; `predicted` [n, m]: the reward model's
    expected reward of every expert for every request."""
    if len(target) < 2:
        raise ValueError("an off-policy estimate needs at least two logged requests")
    if (propensity <= 0).any() or (propensity > 1).any():
        raise ValueError("propensities must be in (0, 1]")
    rows = np.arange(len(target))
    weight = (target == logged) / propensity
    snips = float(weight @ reward / weight.sum()) if weight.any() else None
    per_request = predicted[rows, target] + weight * (reward - predicted[rows, logged])
    stderr = float(per_request.std(ddof=1) / np.sqrt(len(rows)))
    return Estimate(snips, float(per_request.mean()), stderr, int((target == logged).sum()), len(rows), per_request)


def dr_gain(candidate: Estimate, baseline: Estimate) -> tuple[float, float]:
    """The candidate's DR value minus the baseline's, valued on the same requests, and its standard error: that of
    the per-request differences, since the two share their requests (often far below either value's own)."""
    if len(candidate.per_request) != len(baseline.per_request):
        raise ValueError("a gain compares estimates on the same requests")
    difference = candidate.per_request - baseline.per_request
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))
