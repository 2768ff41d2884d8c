"""The one cost-aware policy every router decides with: predicted quality traded against expected cost.

A router predicts a quality per expert; the policy turns that into a choice (and a full ranking, for
the gateway's fallback) knowing what each expert is expected to cost per query:

- lambda rule: maximise  quality - lam * cost, with cost in USD per 1k queries, so that lam reads as
  "quality points I give up to save $1 per 1k queries" (lam = 0 is pure quality);
- margin rule: the cheapest expert whose predicted quality is within `margin` of the best.

A knob text selects a policy per request (the virtual model name's suffix, `moe-reward:0.3`):
`"0.3"` is lam 0.3, `"m0.05"` the margin rule, `"q95"` the lam calibrated on dev so that the router
reaches 95% of the best single expert's dev quality at the lowest cost (table in the manifest's
`params["calibration"]`, written by `calibrate`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset
    from routers.manifest import ExpertProfile, Manifest

QUERIES_PER_COST_UNIT = 1000  # lam is per USD per 1k queries
GRID_SAMPLE_ROWS = 20_000  # queries whose choice crossings place the lam grid
# Without measured costs, a query is priced as this many tokens at the expert's price per 1M tokens,
# which makes an expert's USD per 1k queries equal to its price_per_mtok.
ASSUMED_TOKENS_PER_QUERY = 1000
DEFAULT_TARGETS: dict[str, float] = {"q90": 0.90, "q95": 0.95, "q100": 1.00}
_TARGET_KNOB = re.compile(r"q\d+(\.\d+)?")
# A lambda or a margin: a plain non-negative decimal (float() would also take "nan", "inf", "1_0" and spaces).
_NUMBER_KNOB = re.compile(r"(m?)(\d+(\.\d+)?|\.\d+)")
MAX_KNOB = 50  # as long as the decision log's column


@dataclass(frozen=True)
class CostPolicy:
    """`lam` (lambda rule) unless `margin` is set (margin rule)."""

    lam: float = 0.0
    margin: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lambda must be a finite number >= 0, not {self.lam}")
        if self.margin is not None and (not math.isfinite(self.margin) or self.margin < 0):
            raise ValueError(f"margin must be a finite number >= 0, not {self.margin}")

    def choose(self, quality: np.ndarray, expected_cost: np.ndarray) -> np.ndarray:
        """Per row of `quality` [n, m], the index of the chosen expert; `expected_cost` in USD per query, per
        expert [m] or per query and expert [n, m]."""
        quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
        cost = _per_1k(expected_cost, quality.shape)
        if self.margin is None:
            return np.argmax(quality - self.lam * cost, axis=1)
        eligible = quality >= quality.max(axis=1, keepdims=True) - self.margin
        # Ties in cost go to the better-predicted expert.
        key = np.where(eligible, cost - 1e-12 * quality, np.inf)
        return np.argmin(key, axis=1)

    def rank(self, quality: np.ndarray, expected_cost: np.ndarray) -> np.ndarray:
        """Every expert's index for one query [m], best first: the chosen one, then the fallbacks."""
        quality = np.asarray(quality, dtype=np.float64)
        cost = _per_1k(expected_cost, quality.shape)
        if self.margin is None:
            return np.argsort(-(quality - self.lam * cost), kind="stable")
        eligible = quality >= quality.max() - self.margin
        by_cost = [i for i in np.lexsort((-quality, cost)) if eligible[i]]
        by_quality = [i for i in np.argsort(-quality, kind="stable") if not eligible[i]]
        return np.array(by_cost + by_quality, dtype=np.int64)


def _per_1k(expected_cost: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    cost = np.asarray(expected_cost, dtype=np.float64) * QUERIES_PER_COST_UNIT
    if cost.shape not in {shape, shape[-1:]}:
        raise ValueError(f"expected_cost has shape {cost.shape}, the quality {shape}")
    return cost


def expected_cost(experts: Sequence[ExpertProfile], manifest: Manifest | None) -> np.ndarray:
    """USD per query for each expert (in `experts` order): the manifest's measured `mean_cost` when it
    covers every expert, else a price-based estimate (`ASSUMED_TOKENS_PER_QUERY` at `price_per_mtok`)."""
    measured = (manifest.params.get("mean_cost") if manifest else None) or []
    by_name = dict(zip(manifest.experts, measured, strict=False)) if manifest else {}
    if all(expert.name in by_name for expert in experts):
        return np.array([float(by_name[expert.name]) for expert in experts])
    return np.array([expert.price_per_mtok * ASSUMED_TOKENS_PER_QUERY / 1e6 for expert in experts])


def parse_knob(text: str, calibration: Mapping[str, float] | None = None) -> CostPolicy:
    """`"0.3"` -> lam 0.3; `"m0.05"` -> margin 0.05; `"q95"` -> the calibrated lam for that target."""
    knob = text.lower()
    if len(knob) > MAX_KNOB:
        raise ValueError(f"bad cost knob {text[:MAX_KNOB]!r}...: a knob has at most {MAX_KNOB} characters")
    if _TARGET_KNOB.fullmatch(knob):
        if not calibration or knob not in calibration:
            known = ", ".join(sorted(calibration or {})) or "none: the router was not calibrated"
            raise ValueError(f"no calibrated cost knob {knob!r} for this router (known: {known})")
        return CostPolicy(lam=float(calibration[knob]))
    if not (number := _NUMBER_KNOB.fullmatch(knob)):
        raise ValueError(f"bad cost knob {text!r}: use a lambda (0.3), a margin (m0.05) or a calibrated target (q95)")
    value = float(number.group(2))
    return CostPolicy(margin=value) if number.group(1) else CostPolicy(lam=value)


def lambda_grid(quality: np.ndarray, expected_cost: np.ndarray, points: int = 200) -> np.ndarray:
    """lam values from 0 (pure quality) to one where every query goes to its cheapest expert.

    A query's choice changes only where lam crosses (q_a - q_b) / (c_a - c_b) for an expert a at least
    as good as b and dearer (0 for a tie in quality: any lam > 0 breaks it toward the cheaper one). The
    grid takes quantiles of those crossings and a lam between each two, so the sweep is dense where
    choices change; a log-spaced grid over the same span spent most points where none does and skipped
    the first switches away from the dearest expert. `quality` [n, m]; `expected_cost` per expert [m] or
    per query and expert [n, m].
    """
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(_per_1k(expected_cost, quality.shape), quality.shape)
    sample = np.linspace(0, len(quality) - 1, min(len(quality), GRID_SAMPLE_ROWS)).astype(int)  # bounds memory
    quality, cost = quality[sample], cost[sample]
    gain = quality[:, :, None] - quality[:, None, :]
    extra = cost[:, :, None] - cost[:, None, :]
    trades = (gain >= 0) & (extra > 0)
    if not trades.any():
        return np.zeros(1)  # one price for everyone: cost cannot change a choice
    crossings = np.unique(np.quantile(gain[trades] / extra[trades], np.linspace(0.0, 1.0, points - 1)))
    beyond = 2 * crossings[-1] if crossings[-1] > 0 else 1.0
    return np.concatenate([[0.0], (crossings[:-1] + crossings[1:]) / 2, [beyond]])


def calibrate(
    scores_dev: np.ndarray,
    dev: RoutingDataset,
    targets: Mapping[str, float] = DEFAULT_TARGETS,
    *,
    expected_cost: np.ndarray | None = None,
) -> dict[str, float]:
    """For each named target fraction t, the lam that reaches t x the best single expert's dev quality
    at the lowest dev cost (the lam of best quality when no lam reaches it).

    `scores_dev` [n, m] are the router's predictions for `dev`'s rows, columns in `dev.experts` order;
    `expected_cost` is what `decide` will use, [m] or [n, m] (default: dev's mean cost per expert).
    """
    cost = dev.mean_cost() if expected_cost is None else np.asarray(expected_cost, dtype=np.float64)
    best_single = float(dev.scores.mean(axis=0).max())
    rows = np.arange(len(dev))
    settings = []  # (quality, cost, lam) per lam
    for lam in lambda_grid(scores_dev, cost):
        chosen = CostPolicy(lam=float(lam)).choose(scores_dev, cost)
        settings.append((dev.scores[rows, chosen].mean(), dev.costs[rows, chosen].mean(), float(lam)))
    table = {}
    for name, fraction in targets.items():
        reaching = [s for s in settings if s[0] >= fraction * best_single - 1e-12]
        # Cheapest setting that reaches the target; ties go to the larger lam (the safer saving).
        table[name] = (
            min(reaching, key=lambda s: (s[1], -s[2]))[2] if reaching else max(settings, key=lambda s: (s[0], s[2]))[2]
        )
    return table
