"""Filling the log's unknown rewards with the serving router's predictions (training/log_data.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from routers import ExpertProfile, Router
from routers.dataset import RoutingDataset
from training.log_data import predictions, with_predicted

NAN = np.nan


def logged(weights: np.ndarray | None = None) -> RoutingDataset:
    """Three experts; two train rows and a dev row know one reward each, the last train row knows all three."""
    scores = np.array([[1.0, NAN, NAN], [NAN, 0.0, NAN], [NAN, NAN, 1.0], [0.0, 1.0, 0.0]])
    return RoutingDataset(
        queries=np.array(["q0", "q1", "q2", "q3"], dtype=object),
        experts=("a", "b", "c"),
        scores=scores,
        costs=np.zeros((4, 3)),
        tags=((),) * 4,
        domains=np.full(4, "", dtype=object),
        split=np.array(["train", "train", "dev", "train"], dtype=object),
        weights=weights,
    )


def test_only_the_train_rows_unknown_rewards_are_filled_within_the_rewards_range_and_count_less() -> None:
    ips = np.array([[2.0] * 3, [5.0] * 3, [1.5] * 3, [1.0] * 3])
    predicted = np.array([[0.9, 1.4, NAN], [0.2, 0.3, -0.2], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    filled = with_predicted(logged(ips), predicted, 0.1)

    np.testing.assert_array_equal(filled.scores[0], [1.0, 1.0, NAN])  # 1.4 clipped; no prediction for c: unknown
    np.testing.assert_array_equal(filled.scores[1], [0.2, 0.0, 0.0])  # the observed 0 kept; -0.2 clipped
    np.testing.assert_array_equal(filled.scores[2:], logged().scores[2:])  # dev and fully known rows as they were
    np.testing.assert_array_equal(filled.weights[0], [2.0, 0.1, 2.0])
    np.testing.assert_array_equal(filled.weights[1], [0.1, 5.0, 0.1])
    np.testing.assert_array_equal(filled.weights[2:], ips[2:])

    unweighted = with_predicted(logged(), predicted, 0.5)
    np.testing.assert_array_equal(unweighted.weights[1], [0.5, 1.0, 0.5])
    data = logged()
    assert with_predicted(data, predicted, 0.0) is data


class Fixed(Router):
    """Predicts the same qualities for every query: its experts in another order, one of the log's missing."""

    family = "fixed"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile([0.7, 0.2], (len(texts), 1))

    def fit(self, train: RoutingDataset, dev: RoutingDataset, **params: object) -> Fixed:
        raise NotImplementedError

    def _save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _load(cls, directory: Path, manifest: object, experts: Sequence[ExpertProfile]) -> Router:
        raise NotImplementedError


def test_predictions_follow_the_log_experts_by_name_on_the_train_rows_with_an_unknown_reward() -> None:
    predicted = predictions(Fixed([ExpertProfile("c"), ExpertProfile("a")]), logged())
    np.testing.assert_array_equal(predicted[:2], [[0.2, NAN, 0.7]] * 2)
    assert np.isnan(predicted[2:]).all()  # dev, and the row whose rewards are all known


@pytest.mark.parametrize("weight", [0.1, 1.0])
def test_a_filled_dataset_keeps_its_shape_through_the_splits(weight: float) -> None:
    filled = with_predicted(logged(), np.full((4, 3), 0.5), weight)
    train = filled.of_split("train").with_experts(["c", "a"])
    assert train.weights.shape == train.scores.shape == (3, 2)
