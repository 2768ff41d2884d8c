"""ensemble: the dataset-trained families mixed on dev, the default router for dataset-trained routing.

Members (`MEMBERS`): reward-distilled and skill-based, each fitted on train with its own capacity chosen on dev,
as it would be alone. Their predictions for the dev rows come from fits that had not counted dev's rewards
(`QualityRouter.dev_quality`: skill-based's final profiles count dev too). bert-domain is not a member: it would
add its fine-tuning (255-261 s on the MMLU-Pro pool's train split, 2 cores) to every training and about 5 ms to
every decision, ten times the members' together; whether its predictions would earn that is not measured.

The mix: one non-negative weight per member, shared by every expert, from a grid on the simplex in steps of
STACK_STEP (so each member alone is on it too), the one whose mixed dev predictions have the lowest dev error
(`routers.discovery.dev_error`, the Brier score over every dev query and expert, which chooses the families'
own capacities too). Not the dev AUC of the cost-quality curve, which scores the picked experts only: on the
MMLU-Pro pool's three small experts, dev AUC ranked reward-distilled alone first (0.4525 against skill-based's
0.4481) and the Brier score skill-based (0.2229 against 0.2415), which test ranks first (AUC 0.4527 against
0.4481). Elsewhere the two picked mixes test scores alike: reward-distilled's weight 0.5 by dev AUC and 0.25 by
Brier on the pool's seven experts (test AUC 0.5564 and 0.5556), 0.25 and 0.75 on ZeroEval (0.9075 and 0.9092).

Plain learners (a logistic regression per expert, kNN, RouteLLM's matrix factorisation, a classifier of the
domain with per-domain mean rewards) were members of an earlier version and are not: stacked among themselves on
dev, they routed the MMLU-Pro pool's test split at AUC 0.5516 (accuracy at half the best single model's cost
0.5499) and ZeroEval's at 0.9083 (0.9230), where skill-based alone scored 0.5543 (0.5596) and the two families'
even mix 0.9081 (0.9228); and each is a plain baseline the benchmark reports beside the routers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.discovery import dev_error
from routers.manifest import ExpertProfile, Manifest
from routers.quality import FeatureRouter, QualityRouter, routing_metrics

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

MEMBERS = ("reward-distilled", "skill-based")

MEMBERS_DIR = "members"  # each member's own artifact, in a folder named after its family
STACK_STEP = 0.25


def simplex(members: int, step: float = STACK_STEP) -> np.ndarray:
    """Every weight vector over `members` whose entries are multiples of `step` and sum to 1."""
    units = round(1 / step)
    grid = [c for c in itertools.product(range(units + 1), repeat=members) if sum(c) == units]
    return np.array(grid, dtype=np.float64) / units


def mix_weights(dev_predictions: Sequence[np.ndarray], dev: RoutingDataset) -> np.ndarray:
    """The weights on the simplex grid whose mix of the members' dev predictions has the lowest dev error; the
    first of equals."""
    stacked, grid = np.stack(dev_predictions), simplex(len(dev_predictions))
    return grid[int(np.argmin([dev_error(np.tensordot(w, stacked, axes=1), dev) for w in grid]))]


class EnsembleRouter(QualityRouter):
    family = "ensemble"

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        members: Sequence[FeatureRouter] = (),
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
        """Each member family fitted on train (`features`, when given, passed on), then mixed by the weights with
        the lowest dev error."""
        from routers import router_class

        if not len(train) or not len(dev):
            raise ValueError("the ensemble needs train and dev rows: its mix is chosen on dev")
        fitted: list[FeatureRouter] = []
        for family in members:
            member = router_class(family)(self.experts)
            if not isinstance(member, FeatureRouter):
                raise ValueError(
                    f"{family} is not a family the ensemble can mix: it does not score from query features"
                )
            fitted.append(member.fit(train, dev, **({"features": features} if features else {})))
        dev_predictions = [member.dev_quality for member in fitted if member.dev_quality is not None]
        if len(dev_predictions) != len(fitted):
            raise ValueError("every member must report its held-out dev predictions (QualityRouter.dev_quality)")
        weights = mix_weights(dev_predictions, dev)
        kept = np.flatnonzero(weights > 0)
        self.members, self.weights = [fitted[i] for i in kept], weights[kept]
        for member in self.members:
            member.cost_model = None  # the ensemble prices its decisions; a member's copy would be saved and loaded unused
        self.dev_quality = np.tensordot(weights, np.stack(dev_predictions), axes=1)
        metrics = {
            **routing_metrics("dev", self.dev_quality, dev),
            "dev_error": dev_error(self.dev_quality, dev),
            **{
                f"dev_error_{member.family}": dev_error(prediction, dev)
                for member, prediction in zip(fitted, dev_predictions, strict=True)
            },
        }
        params: dict[str, Any] = {
            "members": [member.family for member in self.members],
            "weights": self.weights.tolist(),
            "candidates": list(members),
            "selection": "dev error (Brier) of the mix, on a grid",
        }
        self._fitted(name, train, dev, metrics, params)
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The weighted sum of the members' scores (each in the data's reward units; the weights sum to one). The
        query's embedding is most of a member's decision (0.22 of 0.25 ms for reward-distilled on the MMLU-Pro
        pool), so members reading one encoder share it: computed once per request, not once per member."""
        if not self.members or self.weights is None:
            raise RuntimeError("the router is not fitted")
        embeddings: dict[tuple[str, str | None], np.ndarray] = {}
        total = np.zeros((len(texts), len(self.experts)))
        for weight, member in zip(self.weights, self.members, strict=True):
            features = member.features
            assert features is not None  # a fitted or loaded member has them
            key = (features.encoder, features.identity)
            if key not in embeddings:
                embeddings[key] = features.embed(texts)
            total += weight * member.score_features(features.with_embeddings(texts, embeddings[key]))
        return total

    def _save(self, directory: Path) -> None:
        for member in self.members:
            member.save(directory / MEMBERS_DIR / member.family)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        from routers import load_router

        members = [load_router(directory / MEMBERS_DIR / family, experts) for family in manifest.params["members"]]
        if not all(isinstance(member, FeatureRouter) for member in members):
            raise ValueError(f"{directory}: a member does not score from query features")
        weights = np.array(manifest.params["weights"], dtype=np.float64)
        return cls(experts, manifest, members, weights)  # type: ignore[arg-type]
