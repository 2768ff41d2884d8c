"""bench/learning_ceiling.py replays the learning benchmark's logging policy: what it reveals and how it splits."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from bench.learning_ceiling import draw_datasets, revealed
from bench.learning_data import Plan
from routers import ExpertProfile
from routers.dataset import RoutingDataset


def test_the_start_answers_unless_exploring_and_exploration_is_uniform_over_the_others() -> None:
    quality = np.tile([0.1, 0.9, 0.3, 0.2], (20_000, 1))
    assert (revealed(quality, 0.0, np.random.default_rng(0)) == 1).all()
    answered = revealed(quality, 0.3, np.random.default_rng(0))
    shares = np.bincount(answered, minlength=4) / len(answered)
    np.testing.assert_allclose(shares, [0.1, 0.7, 0.1, 0.1], atol=0.01)


def test_each_way_trains_on_what_the_log_reveals() -> None:
    n, m = 2_000, 3
    rng = np.random.default_rng(1)
    data = RoutingDataset(
        queries=np.array([f"question {i}" for i in range(n)], dtype=object),
        experts=("a", "b", "c"),
        scores=rng.integers(0, 2, (n, m)).astype(float),
        costs=np.ones((n, m)),
        tags=((),) * n,
        domains=np.full(n, "", dtype=object),
        split=np.full(n, "train", dtype=object),
    )
    start = SimpleNamespace(
        experts=[ExpertProfile(name) for name in data.experts],
        score=lambda texts: np.tile([0.2, 0.8, 0.5], (len(texts), 1)),
    )
    rows = Plan(start=np.arange(100), stream=np.arange(100, 1_600), dev=np.arange(1_600, 2_000))
    ways = draw_datasets(data, rows, start, 0.3, np.random.default_rng(2))  # type: ignore[arg-type]

    every = ways["all_rows"]
    logged = every.split == "train"
    assert logged.sum() == 1_600 and (every.split == "dev").sum() == 400
    assert (~np.isnan(every.scores[100:1_600])).sum(axis=1).tolist() == [1] * 1_500  # one reward a logged question
    assert not np.isnan(every.scores[:100]).any() and not np.isnan(every.of_split("dev").scores).any()

    filled = ways["all_rows_fill"]
    assert not np.isnan(filled.scores).any()
    assert set(np.unique(filled.weights[100:1_600])) == {0.1, 1.0}

    split, refit = ways["retrain_split_fill"], ways["retrain_refit_fill"]
    assert 0.17 < 1 - (len(split) - 500) / 1_500 < 0.23  # the held-out share left out
    log_dev = split.subset((split.split == "dev") & np.isnan(split.scores).any(axis=1))
    assert 0.13 < len(log_dev) / 1_500 < 0.19  # the dev share of what is not held out, one reward each, not filled
    # The refit has the held-out rows back in train, filled like the rest; its dev is the split's.
    assert len(refit) == 2_000 and (refit.split == "train").sum() == 1_600 - len(log_dev)
    assert not np.isnan(refit.of_split("train").scores).any()
    assert set(refit.of_split("dev").queries) == set(split.of_split("dev").queries)
