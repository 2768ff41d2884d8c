"""What the dataset-trained families share: experts taken from the data, quality tables, the manifest.

`bert-domain`, `reward-distilled` and `skill-based` route between the experts a RoutingDataset
scores (the pool's models, or a user's own names) and predict, per query, each expert's quality in
the dataset's reward units (for the pool: the probability its answer is right). Columns follow
`manifest.experts`; whatever profiles the gateway passes at load time are put in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routers.base import Router
from routers.cost import CostModel
from routers.features import QueryFeatures
from routers.manifest import ExpertProfile, Manifest, data_hash
from routers.policy import calibrate

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset


def profiles_of(dataset: RoutingDataset) -> list[ExpertProfile]:
    return [ExpertProfile(name) for name in dataset.experts]


def aligned_profiles(names: Sequence[str], experts: Sequence[ExpertProfile]) -> list[ExpertProfile]:
    """The given profiles in the artifact's column order; every expert the router was trained on must be there."""
    by_name = {expert.name: expert for expert in experts}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"the router was trained for experts {missing} that are not configured")
    return [by_name[name] for name in names]


def smoothed_quality(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str], strength: float) -> np.ndarray:
    """Shape (len(classes), m): mean score of each expert per label, shrunk toward the expert's global mean.

    A Beta(strength * global, strength * (1 - global)) prior for 0/1 rewards: a label seen a few
    times says little, so its row stays close to the expert's overall quality.
    """
    overall = scores.mean(axis=0)
    table = np.empty((len(classes), scores.shape[1]))
    for row, label in enumerate(classes):
        members = labels == label
        table[row] = (scores[members].sum(axis=0) + strength * overall) / (members.sum() + strength)
    return table


def routing_metrics(prefix: str, predicted: np.ndarray, dataset: RoutingDataset) -> dict[str, float]:
    """Mean reward of the argmax pick, against the best single expert and the oracle on the same rows.

    With partial scores (NaN where an expert's reward is unknown) the accuracy is the mean over the rows
    where the pick's reward is known (a replay estimate, biased toward the logging policy's choices), the
    best single expert's is its mean where known, and the oracle counts the fully scored rows only; a metric
    without a row to measure it on is absent.
    """
    picked = dataset.scores[np.arange(len(dataset)), np.argmax(predicted, axis=1)]
    known = ~np.isnan(dataset.scores)
    per_expert = [column[seen].mean() for column, seen in zip(dataset.scores.T, known.T, strict=True) if seen.any()]
    complete = known.all(axis=1)
    metrics = {f"n_{prefix}": float(len(dataset))}
    if (~np.isnan(picked)).any():
        metrics[f"{prefix}_accuracy"] = float(np.nanmean(picked))
    if per_expert:
        metrics[f"{prefix}_best_single"] = float(max(per_expert))
    if complete.any():
        metrics[f"{prefix}_oracle"] = float(dataset.scores[complete].max(axis=1).mean())
    return metrics


class QualityRouter(Router):
    """A router whose `score` is each expert's expected quality, trained on a RoutingDataset; with the
    dataset's costs, it also predicts each expert's cost per query (`routers/cost.py`).

    After `fit`, `dev_quality` holds its predictions for the dev rows from a fit that had not counted dev's rewards
    (a family may count them in its final tables): what the ensemble stacks on dev without the member's hindsight.
    """

    dev_quality: np.ndarray | None = None

    def _fitted(
        self, name: str, train: RoutingDataset, dev: RoutingDataset, metrics: dict[str, float], params: dict[str, Any]
    ) -> None:
        """The last step of every family's fit: the per-query cost model, the cost knobs calibrated on dev
        (`q90`, `q95`, `q100`: see routers/policy.py) and the manifest."""
        self.cost_model = train.cost_model
        dev_texts = dev.queries.tolist()
        calibration = {}
        if len(dev):
            predicted = self.score(dev_texts)
            # An unknown reward (partial scores) counts as the router's own prediction of it.
            known = replace(dev, scores=np.where(np.isnan(dev.scores), predicted, dev.scores))
            calibration = calibrate(predicted, known, expected_cost=self.query_cost(dev_texts))
        rows = [
            {"query": q, "scores": s, "split": split}
            for part, split in ((train, "train"), (dev, "dev"))
            for q, s in zip(part.queries.tolist(), part.scores.tolist(), strict=True)
        ]
        self.manifest = Manifest(
            family=self.family,
            name=name,
            version=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            data_hash=data_hash(rows),
            experts=list(train.experts),
            metrics={"n_train": float(len(train)), **metrics},
            # Budgets over several experts count this average, aligned with `experts`.
            params={
                "mean_cost": train.mean_cost().tolist(),
                "query_cost": self.cost_model is not None,
                "calibration": calibration,
                **params,
            },
        )

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.cost_model is not None:
            self.cost_model.save(directory)

    @classmethod
    def load(cls, directory: Path, experts: Sequence[ExpertProfile]) -> Router:
        manifest = Manifest.read(directory)
        router = cls._load(directory, manifest, aligned_profiles(manifest.experts, experts))
        router.cost_model = CostModel.load(directory)
        return router


class FeatureRouter(QualityRouter):
    """A quality router that scores from its query features (`routers.features`): reward-distilled and skill-based.
    Handing it features computed once lets several such routers share a request's embedding (the ensemble)."""

    features: QueryFeatures | None = None

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.features is None:
            raise RuntimeError("the router is not fitted")
        return self.score_features(self.features(texts))

    def score_features(self, x: np.ndarray) -> np.ndarray:
        """`score` from the texts' features (`self.features`)."""
        raise NotImplementedError
