"""reward-distilled (Zooter): distil per-query expert rewards into a small head over frozen query features.

The reward is whatever the dataset scores each expert's answer with (`RoutingDataset.scores`: gold
correctness for the pool, a reward model's or a judge's grade in a user's JSONL), so a new reward
source is a new dataset, not new code. The head (routers/reward_head.py) is trained one of two ways:
- `kl`, the paper's: a distribution over experts fitted to softmax(reward / T) after its tag-based label
  enhancement (the reward vector mixed, with weight beta, with the mean reward of the queries sharing its
  tags, which denoises single 0/1 outcomes);
- `bce`: each output its expert's log-odds of reward, by binary cross-entropy per expert.
The cost policy trades absolute qualities against prices that differ 500x between experts (ZeroEval); a
softmax only ranks experts, and a query many experts get right spreads its mass thin. On dev, `bce` had
the larger cost-quality AUC on ZeroEval (28 experts: 0.919 against 0.913) and the MMLU-Pro pool (seven:
0.551 against 0.547), `kl` on the pool's three small experts (0.452 against 0.448): the search starts from
`bce` and keeps `kl` as a candidate. Either way one calibration fitted on dev, monotone and shared by
the experts, turns the head's outputs into the reward's scale (for the pool: P(right)).

Capacity is chosen on dev, with the same defaults for every dataset: a coordinate search (`SEARCH`) that
starts from the first value of each axis and, axis by axis, keeps the value with the best dev
cost-quality AUC (training/evaluate.py's envelope, over the cost policy's lambda sweep, each query priced
by the cost model the router will route with). The axes: the feature kind (when `features` is None; cheap
kinds only, whose decision stays well under 1 ms), the objective, the hidden size, the weight decay, then
for `kl` its beta and T. Epochs are early-stopped on dev. Choosing the kind too, that is 5 fits when `bce`
wins and 8 when `kl` does, each recorded with its score in the manifest (`params["search"]`).

Partial scores (bandit feedback from the decision log, `moe router retrain`: only the chosen expert's
reward is known) have no distribution to distil and no AUC to measure: the head is `bce` on the known
entries only (or filled with the parent's predictions, counting less), optionally weighted (inverse propensity),
and the search compares dev log loss on the known (query, expert) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.features import CHEAP_KINDS, QueryFeatures
from routers.manifest import ExpertProfile, Manifest
from routers.policy import lambda_grid
from routers.quality import FeatureRouter, routing_metrics
from routers.reward_head import RewardHead, fit_head, tag_enhanced

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

HEAD_FILE = "reward_head.npz"


# Each axis of the search with its values, the default first. `kl`'s own axes are searched only when `kl` is chosen.
SEARCH: dict[str, tuple[Any, ...]] = {
    "objective": ("bce", "kl"),
    "hidden": (256, 64),
    "weight_decay": (1e-2, 1.0),
    "beta": (0.5, 0.0, 0.9),  # weight of the tag mean in kl's target (0 when the data has no tags)
    "temperature": (0.3, 0.1),  # kl's; rewards in [0, 1] differ by fractions: T near 1 gives flat targets
}
KL_ONLY = ("beta", "temperature")


@dataclass(frozen=True)
class Setting:
    """One point of the search: what the head reads, how it is trained, its capacity."""

    features: str
    objective: str
    hidden: int
    weight_decay: float
    beta: float
    temperature: float

    def params(self) -> dict[str, Any]:
        """The setting as a manifest records it: kl's own axes only for kl."""
        return {k: v for k, v in asdict(self).items() if self.objective == "kl" or k not in KL_ONLY}


@dataclass(frozen=True)
class Trial:
    setting: Setting
    head: RewardHead
    score: float  # dev cost-quality AUC; with partial scores, dev log-likelihood


class Search:
    """Fits and scores settings on one train / dev pair; features computed once per kind."""

    def __init__(self, train: RoutingDataset, dev: RoutingDataset, low: float, high: float) -> None:
        self.train, self.dev = train, dev
        span = (high - low) or 1.0
        self.unit, self.dev_unit = (train.scores - low) / span, (dev.scores - low) / span
        self.partial = bool(np.isnan(self.unit).any() or np.isnan(self.dev_unit).any())
        cost_model = train.cost_model
        self.dev_cost = cost_model(dev.queries.tolist()) if cost_model else np.tile(train.mean_cost(), (len(dev), 1))
        self.features: dict[str, tuple[QueryFeatures, np.ndarray, np.ndarray]] = {}
        self.tried: list[tuple[Setting, float]] = []

    def of_kind(self, kind: str) -> tuple[QueryFeatures, np.ndarray, np.ndarray]:
        if kind not in self.features:
            features = QueryFeatures.fit(kind, self.train.queries.tolist())
            self.features[kind] = (
                features,
                features.of_training(self.train.queries.tolist()),
                features.of_training(self.dev.queries.tolist()),
            )
        return self.features[kind]

    def trial(self, setting: Setting) -> Trial:
        _, x, dev_x = self.of_kind(setting.features)
        if setting.objective == "kl":
            logits = tag_enhanced(self.unit, self.train.tags, setting.beta) / setting.temperature
            target = np.exp(logits - logits.max(axis=1, keepdims=True))
            target /= target.sum(axis=1, keepdims=True)
        else:
            target = self.unit
        head = fit_head(
            x,
            target,
            dev_x,
            self.dev_unit,
            objective=setting.objective,
            weights=self.train.weights,
            hidden=setting.hidden,
            weight_decay=setting.weight_decay,
        ).calibrated(dev_x, self.dev_unit)
        trial = Trial(setting, head, self.score(head.quality(dev_x)))
        self.tried.append((setting, trial.score))
        return trial

    def score(self, unit_quality: np.ndarray) -> float:
        if self.partial:
            known = ~np.isnan(self.dev_unit)
            p, r = np.clip(unit_quality[known], 1e-6, 1 - 1e-6), self.dev_unit[known]
            return float(np.mean(r * np.log(p) + (1 - r) * np.log(1 - p)))
        return dev_auc(unit_quality, self.dev_cost, self.dev)

    def run(self, kinds: Sequence[str]) -> Trial:
        """The coordinate search of the module docstring, from the first kind and each axis's default."""
        tagged = any(self.train.tags)
        defaults = {axis: values[0] for axis, values in SEARCH.items()}
        start = Setting(kinds[0], **{**defaults, "beta": defaults["beta"] if tagged else 0.0})
        best = max((self.trial(replace(start, features=kind)) for kind in kinds), key=lambda t: t.score)
        for axis, values in SEARCH.items():
            if (axis == "objective" and self.partial) or (axis == "beta" and not tagged):
                continue
            if axis in KL_ONLY and best.setting.objective != "kl":
                continue
            for value in values:
                if value == getattr(best.setting, axis):
                    continue
                candidate = self.trial(replace(best.setting, **{axis: value}))
                if candidate.score > best.score:
                    best = candidate
        return best


def dev_auc(quality: np.ndarray, expected_cost: np.ndarray, dev: RoutingDataset) -> float:
    """The area under the dev cost-quality envelope, as `training.evaluate.evaluate` reports it (its cost axis: the
    cheapest to the dearest expert's mean cost), the policy trading `quality` against `expected_cost`."""
    from routers.frontier import area_under, envelope, sweep

    single = dev.mean_cost() * 1000
    settings = sweep(quality, expected_cost, dev, lambda_grid(quality, expected_cost))
    return area_under(envelope(settings), float(single.min()), float(single.max()))


class RewardDistilledRouter(FeatureRouter):
    family = "reward-distilled"
    learns_from_partial_scores = True

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        head: RewardHead | None = None,
        features: QueryFeatures | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self.head = head
        self.features = features

    def fit(
        self, train: RoutingDataset, dev: RoutingDataset, *, features: str | None = None, name: str = "reward-distilled"
    ) -> Self:
        """`features` None: chosen on dev among CHEAP_KINDS; any other kind is used as is."""
        both = np.concatenate([train.scores, dev.scores])
        low, high = float(np.nanmin(both)), float(np.nanmax(both))
        search = Search(train, dev, low, high)
        best = search.run(CHEAP_KINDS if features is None else (features,))
        self.features, _, dev_x = search.of_kind(best.setting.features)
        self.head = replace(best.head, reward_range=np.array([low, high]))
        quality = self.dev_quality = self.head.quality(dev_x)
        metrics = routing_metrics("dev", quality, dev)
        # Mean predicted minus mean actual reward per expert, on the rows (and entries) the calibration was fitted to.
        known = ~np.isnan(dev.scores)
        gaps = [
            abs(q[seen].mean() - r[seen].mean())
            for q, r, seen in zip(quality.T, dev.scores.T, known.T, strict=True)
            if seen.any()
        ]
        metrics["dev_calibration_gap"] = float(max(gaps))
        metrics["dev_log_likelihood" if search.partial else "dev_auc"] = best.score
        self._fitted(
            name,
            train,
            dev,
            metrics,
            {
                **self.features.params(),
                **{key: value for key, value in best.setting.params().items() if key != "features"},
                "quality_calibration": "platt-on-dev",
                "search": [{**setting.params(), "score": score} for setting, score in search.tried],
            },
        )
        return self

    def score_features(self, x: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("the router is not fitted")
        return self.head.quality(x)

    def _save(self, directory: Path) -> None:
        assert self.head is not None and self.features is not None
        self.head.save(directory / HEAD_FILE)
        self.features.save(directory)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        features = QueryFeatures.load(directory, manifest.params)
        return cls(experts, manifest, RewardHead.load(directory / HEAD_FILE), features)
