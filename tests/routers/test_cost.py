"""Per-query cost: the cost model learns what a query costs with each expert, and the policy trades against it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import ExpertProfile, Manifest, Router
from routers.cost import CostModel
from routers.dataset import RoutingDataset
from routers.policy import CostPolicy, lambda_grid

PRICES = np.array([1.0, 0.1])  # USD per 1M tokens: a dear and a cheap expert
WORDS = ["integral", "treaty", "enzyme", "contract", "voltage", "poem"]


def rows(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts of 1 to 300 words; each expert's cost is its price times the text's tokens, the dear one
    writing twice as much about integrals."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 300)))) for _ in range(n)]
    tokens = np.array([len(text) / 4 for text in texts])
    verbose = np.array([2.0 if text.count("integral") > text.count("poem") else 1.0 for text in texts])
    return texts, np.stack([tokens * verbose * PRICES[0], tokens * PRICES[1]], axis=1) / 1e6


def test_the_cost_model_learns_length_and_each_experts_price(tmp_path: Path) -> None:
    texts, costs = rows(400)
    model = CostModel.fit(texts, costs)
    assert model is not None
    unseen, truth = rows(100, seed=1)
    predicted = model(unseen)
    assert predicted.shape == (100, 2)
    assert np.corrcoef(np.log(predicted[:, 1]), np.log(truth[:, 1]))[0, 1] > 0.9  # longer costs more
    assert 5 < np.median(predicted[:, 0] / predicted[:, 1]) < 20  # the dear expert's price is ten times
    model.save(tmp_path)
    np.testing.assert_allclose(CostModel.load(tmp_path)(unseen), predicted)


def test_without_known_costs_there_is_no_cost_model(tmp_path: Path) -> None:
    texts, costs = rows(50)
    assert CostModel.fit(texts, np.zeros_like(costs)) is None
    assert CostModel.load(tmp_path) is None


class TwoExperts(Router):
    """The dear expert predicted better on every query; what a query costs comes from a cost model."""

    family = "two-experts"

    def __init__(self, cost_model: CostModel) -> None:
        super().__init__([ExpertProfile("dear", price_per_mtok=1.0), ExpertProfile("cheap", price_per_mtok=0.1)])
        self.cost_model = cost_model

    def fit(self, train: RoutingDataset, dev: RoutingDataset, **params: Any) -> TwoExperts:
        raise NotImplementedError

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile([0.7, 0.6], (len(texts), 1))

    def _save(self, directory: Path) -> None: ...

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Router:
        raise NotImplementedError


def test_a_policy_sends_long_queries_to_the_cheap_expert_and_short_ones_to_the_better() -> None:
    texts, costs = rows(400)
    router = TwoExperts(CostModel.fit(texts, costs))  # type: ignore[arg-type]
    # At lam 20 the dear expert's 0.1 more quality is worth $0.005 per 1k queries more: about 2.5 tokens'
    # worth for a 2-word query ($0.0025 vs $0.00025 per 1k), 300 times less than for a 250-word one.
    short, long = "poem poem", " ".join(["poem"] * 250)
    policy = CostPolicy(lam=20.0)
    assert router.decide([{"role": "user", "content": short}], policy).chosen == "dear"
    assert router.decide([{"role": "user", "content": long}], policy).chosen == "cheap"
    assert router.decide([{"role": "user", "content": long}]).chosen == "dear"  # no policy: quality alone


def test_per_query_costs_in_the_policy_and_its_lambda_grid() -> None:
    quality = np.array([[0.9, 0.7], [0.9, 0.7]])
    cost = np.array([[1e-4, 1e-5], [1e-2, 1e-3]])  # the second query costs a hundred times more
    assert CostPolicy(lam=1.0).choose(quality, cost).tolist() == [0, 1]
    grid = lambda_grid(quality, cost)
    assert grid[0] == 0 and CostPolicy(lam=float(grid[-1])).choose(quality, cost).tolist() == [1, 1]
