"""ensemble: the dataset-trained families stacked on dev, the default router for dataset-trained routing.

Members (`MEMBERS`): reward-distilled and skill-based, each fitted on train with its own capacity chosen on dev,
as it would be alone. Their predictions for the dev rows come from fits that had not counted dev's rewards
(`QualityRouter.dev_quality`: skill-based's final profiles count dev too). bert-domain is not a member: one epoch
of its fine-tuning on the MMLU-Pro pool's train split takes longer on two cores than the training-time budget.

Plain learners (a logistic regression per expert, kNN, RouteLLM's matrix factorisation, a classifier of the
domain with per-domain mean rewards) were members of an earlier version and are not: stacked among themselves on
dev, they routed the MMLU-Pro pool's test split at AUC 0.5516 (accuracy at half the best single model's cost
0.5499) and ZeroEval's at 0.9083 (0.9230), where skill-based alone scored 0.5543 (0.5596) and the two families'
even mix 0.9081 (0.9228); and each is a plain baseline the benchmark reports beside the routers.

Every choice is made by what the benchmark judges, `training.evaluate`'s AUC (the area under the cost-quality
curve) of the dev predictions, traded by the cost policy against the cost the router predicts for each dev query.
Two ways to choose are compared: the best member alone, and a mix (one non-negative weight per member, shared by
every expert, from a grid on the simplex in steps of STACK_STEP, the one with the best dev log-likelihood: a smooth
fit, where AUC on four fifths of dev is too rough to fit weights with). Each is scored by FOLDS-fold
cross-validation on dev, averaged over REPEATS draws of the folds: its choice made on the other folds, its AUC on
the rows held out of them. The mix is kept only when it beats the best member; the winner's choice is then made
again on all of dev. Which member is best is itself chosen on dev, so it is scored held out too: the largest of
the members' own dev AUCs (`dev_auc_<member>` in the manifest, for the record) is the luckiest of the estimates.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.cost import CostModel
from routers.manifest import ExpertProfile, Manifest
from routers.quality import QualityRouter, routing_metrics
from routers.reward_distilled import dev_auc

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

MEMBERS = ("reward-distilled", "skill-based")
MEMBERS_DIR = "members"  # each member's own artifact, in a folder named after its family
STACK_STEP = 0.25
FOLDS = 5
REPEATS = 3  # cross-validations with different folds, averaged: on ZeroEval's dev one draw moved an AUC by 0.006
Scorer = Callable[[np.ndarray, np.ndarray], float]  # (unit predictions for those dev rows, the rows' mask) -> AUC


@dataclass(frozen=True)
class Selection:
    weights: np.ndarray  # per member, its weight in the mix (a single 1 when the best member alone won)
    single_auc: float  # the cross-validated dev AUC of choosing the best member
    mix_auc: float  # the cross-validated dev AUC of choosing the mix's weights

    @property
    def mixed(self) -> bool:
        """Whether the mix won: it must beat the best member to be kept."""
        return self.mix_auc > self.single_auc


def simplex(members: int, step: float = STACK_STEP) -> np.ndarray:
    """Every weight vector over `members` whose entries are multiples of `step` and sum to 1."""
    units = round(1 / step)
    grid = [c for c in itertools.product(range(units + 1), repeat=members) if sum(c) == units]
    return np.array(grid, dtype=np.float64) / units


def best_member(predictions: Sequence[np.ndarray], rows: np.ndarray, score: Scorer) -> int:
    """The index of the member whose predictions (for every dev row) score best on `rows`; the first of equals."""
    return int(np.argmax([score(p[rows], rows) for p in predictions]))


def mix_weights(predictions: Sequence[np.ndarray], rows: np.ndarray, score: Scorer) -> np.ndarray:
    """The weights on the simplex grid whose mix of `predictions` (for every dev row) scores best on `rows`."""
    members = np.stack([p[rows] for p in predictions])
    return max(simplex(len(predictions)), key=lambda w: score(np.tensordot(w, members, axes=1), rows))


def select(predictions: Sequence[np.ndarray], score: Scorer, likelihood: Scorer) -> Selection:
    """Two ways to choose from the members' dev predictions, each scored by `score` on the dev rows held out of its
    choice (FOLDS-fold cross-validation, averaged over REPEATS draws of the folds): the best member alone (by
    `score`) and the mix (its weights by `likelihood`). The winner's choice is then made on every dev row; the best
    member wins ties."""
    n, k = len(predictions[0]), len(predictions)
    everything = np.ones(n, dtype=bool)
    auc = np.zeros(2)  # the best member, the mix
    for seed in range(REPEATS):
        fold = np.random.default_rng(seed).permutation(n) % min(FOLDS, n)
        held_out = np.empty((2, *predictions[0].shape))
        for f in range(fold.max() + 1):
            rows, fitting = fold == f, fold != f
            held_out[0, rows] = predictions[best_member(predictions, fitting, score)][rows]
            weights = mix_weights(predictions, fitting, likelihood)
            held_out[1, rows] = np.tensordot(weights, np.stack([p[rows] for p in predictions]), axes=1)
        auc += [score(prediction, everything) / REPEATS for prediction in held_out]
    mixed = auc[1] > auc[0]
    weights = (
        mix_weights(predictions, everything, likelihood)
        if mixed
        else np.eye(k)[best_member(predictions, everything, score)]
    )
    return Selection(weights, float(auc[0]), float(auc[1]))


class EnsembleRouter(QualityRouter):
    family = "ensemble"

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        members: Sequence[QualityRouter] = (),
        weights: np.ndarray | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self.members = list(members)
        self.weights = weights

    def fit(
        self,
        train: RoutingDataset,
        dev: RoutingDataset,
        *,
        features: str | None = None,
        members: Sequence[str] = MEMBERS,
        name: str = "ensemble",
    ) -> Self:
        """Each member family fitted on train (`features`, when given, passed on), then the best member alone or
        their mix, whichever wins on dev under cross-validation."""
        from routers import router_class

        if not len(train) or not len(dev):
            raise ValueError("the ensemble needs train and dev rows: its members and their mix are chosen on dev")
        both = np.concatenate([train.scores, dev.scores])
        low, high = float(both.min()), float(both.max())
        span = (high - low) or 1.0  # members' dev predictions to [0, 1], where the mix's likelihood is read
        dev_y = (dev.scores - low) / span
        fitted: list[QualityRouter] = []
        for family in members:
            member = router_class(family)(self.experts)
            assert isinstance(member, QualityRouter)
            fitted.append(member.fit(train, dev, **({"features": features} if features else {})))
        dev_units = [(member.dev_quality - low) / span for member in fitted if member.dev_quality is not None]
        if len(dev_units) != len(fitted):
            raise ValueError("every member must report its held-out dev predictions (QualityRouter.dev_quality)")
        cost_model = CostModel.fit(train.queries.tolist(), train.costs)  # what `decide` will trade against
        dev_cost = cost_model(dev.queries.tolist()) if cost_model is not None else train.mean_cost()

        def score(unit: np.ndarray, rows: np.ndarray) -> float:
            cost = dev_cost[rows] if dev_cost.ndim == 2 else dev_cost
            return dev_auc(low + span * unit, cost, dev.subset(rows))

        def likelihood(unit: np.ndarray, rows: np.ndarray) -> float:
            p, wanted = np.clip(unit, 1e-4, 1 - 1e-4), dev_y[rows]
            return float(np.mean(wanted * np.log(p) + (1 - wanted) * np.log(1 - p)))

        selection = select(dev_units, score, likelihood)
        kept = np.flatnonzero(selection.weights > 0)
        self.members, self.weights = [fitted[i] for i in kept], selection.weights[kept]
        everything = np.ones(len(dev), dtype=bool)
        self.dev_quality = low + span * np.tensordot(selection.weights, np.stack(dev_units), axes=1)
        metrics = {
            **routing_metrics("dev", self.dev_quality, dev),
            "dev_auc": score((self.dev_quality - low) / span, everything),
            "dev_auc_cv_mix": selection.mix_auc,
            "dev_auc_cv_best_member": selection.single_auc,
            **{
                f"dev_auc_{member.family}": score(unit, everything)
                for member, unit in zip(fitted, dev_units, strict=True)
            },
        }
        params: dict[str, Any] = {
            "members": [member.family for member in self.members],
            "weights": self.weights.tolist(),
            "combination": "mix" if selection.mixed else self.members[0].family,
            "candidates": list(members),
            "selection": "cost-quality AUC on dev",
        }
        self._fitted(name, train, dev, metrics, params)
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not self.members or self.weights is None:
            raise RuntimeError("the router is not fitted")
        # Every member predicts in the data's reward units, and the weights sum to one: the mix is in them too.
        return sum(w * member.score(texts) for w, member in zip(self.weights, self.members, strict=True))

    def _save(self, directory: Path) -> None:
        for member in self.members:
            member.save(directory / MEMBERS_DIR / member.family)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        from routers import load_router

        members = [load_router(directory / MEMBERS_DIR / family, experts) for family in manifest.params["members"]]
        assert all(isinstance(member, QualityRouter) for member in members)
        weights = np.array(manifest.params["weights"], dtype=np.float64)
        return cls(experts, manifest, members, weights)  # type: ignore[arg-type]
