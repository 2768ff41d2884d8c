"""reward-distilled chooses its capacity on dev: the coordinate search's path, the head's two readings, the lazy
first-layer optimiser, and a fit that picks its own feature kind on data with full and with partial scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from routers import ExpertProfile, load_router
from routers.dataset import RoutingDataset
from routers.reward_distilled import CHEAP_KINDS, SEARCH, RewardDistilledRouter, Search, Setting, Trial
from routers.reward_head import LEARNING_RATE, LazyAdamW, RewardHead

MATHS = [
    "Compute the derivative of {a}x^{b} + {c}x.",
    "Solve the equation {a}x + {c} = {b} for x.",
    "What is the integral of x^{b} from 0 to {a}?",
]
HISTORY = [
    "Which emperor ruled Rome in the year {a}{b} AD?",
    "What caused the fall of the {d} dynasty?",
    "Describe the trade routes of the medieval {d} kingdom.",
]
DYNASTIES = ["Han", "Tang", "Ming", "Song", "Qing", "Habsburg", "Ottoman", "Tudor"]


def made_up(n: int = 200, *, tags: bool = False, partial: bool = False) -> RoutingDataset:
    """alpha is right on maths, beta on history (90% of the time), alpha costs twice as much; splits 60/20/20.
    `partial`: each row knows one expert's reward only, as bandit feedback does."""
    rng = np.random.default_rng(0)
    queries, scores = [], np.zeros((n, 2))
    for i in range(n):
        maths = i % 2 == 0
        template = (MATHS if maths else HISTORY)[rng.integers(3)]
        queries.append(
            template.format(
                a=rng.integers(2, 9),
                b=rng.integers(2, 9),
                c=rng.integers(1, 9),
                d=DYNASTIES[rng.integers(len(DYNASTIES))],
            )
            + f" (#{i})"
        )
        alpha_right = maths != (rng.random() < 0.1)
        scores[i] = [float(alpha_right), float(not alpha_right)]
    if partial:
        scores[np.arange(n), rng.integers(2, size=n)] = np.nan
    return RoutingDataset(
        queries=np.array(queries, dtype=object),
        experts=("alpha", "beta"),
        scores=scores,
        costs=np.tile([0.002, 0.001], (n, 1)) * rng.uniform(0.5, 1.5, size=(n, 1)),
        tags=tuple(("maths" if i % 2 == 0 else "history",) if tags else () for i in range(n)),
        domains=np.array([""] * n, dtype=object),
        split=np.array([("train", "train", "train", "dev", "test")[i % 5] for i in range(n)]),
    )


class Scripted(Search):
    """The search's path with each setting's dev score given by `scores` instead of a fitted head."""

    def __init__(self, scores: Callable[[Setting], float], *, tagged: bool = True, partial: bool = False) -> None:
        self.train = made_up(10, tags=tagged)
        self.partial = partial
        self.tried = []
        self.scores = scores

    def trial(self, setting: Setting) -> Trial:
        self.tried.append((setting, self.scores(setting)))
        return Trial(setting, None, self.scores(setting))  # type: ignore[arg-type]


def test_the_search_goes_axis_by_axis_and_keeps_what_scores_best_on_dev() -> None:
    def score(s: Setting) -> float:  # static wins, kl wins, 64 wins, weight decay makes no difference, beta 0 wins
        return (
            (s.features == "static")
            + (s.objective == "kl")
            + (s.hidden == 64)
            + (s.beta == 0.0)
            - (s.temperature == 0.1)
        )

    search = Scripted(score)
    best = search.run(CHEAP_KINDS)
    assert best.setting == Setting("static", "kl", 64, SEARCH["weight_decay"][0], 0.0, SEARCH["temperature"][0])
    tried = [setting for setting, _ in search.tried]
    assert len(tried) == len(set(tried)) == len(CHEAP_KINDS) + sum(len(values) - 1 for values in SEARCH.values())
    assert [s.features for s in tried[: len(CHEAP_KINDS)]] == list(CHEAP_KINDS)  # the kind is chosen first
    assert all(s.features == "static" for s in tried[len(CHEAP_KINDS) :])


def test_kl_axes_are_left_alone_when_bce_wins_and_partial_scores_never_try_kl() -> None:
    def prefers_bce(s: Setting) -> float:
        return float(s.objective == "bce")

    full = Scripted(prefers_bce)
    assert full.run(("static+lexical",)).setting.objective == "bce"
    assert [s.objective for s, _ in full.tried].count("kl") == 1
    assert {s.beta for s, _ in full.tried} == {SEARCH["beta"][0]} and len(full.tried) == 4

    partial = Scripted(lambda s: float(s.objective == "kl"), partial=True)
    assert partial.run(("static+lexical",)).setting.objective == "bce"
    assert all(s.objective == "bce" for s, _ in partial.tried)

    untagged = Scripted(lambda s: float(s.objective == "kl") - s.beta, tagged=False)
    assert untagged.run(("static",)).setting.beta == 0.0  # no tags: no tag mean to mix in
    assert {s.beta for s, _ in untagged.tried} == {0.0}


def head(reading: str, dim: int = 50, seed: int = 0) -> RewardHead:
    rng = np.random.default_rng(seed)
    return RewardHead(
        rng.normal(size=(dim, 8)),
        rng.normal(size=8),
        rng.normal(size=(8, 3)),
        rng.normal(size=3),
        np.array([1.5, -0.2]),
        np.array([0.0, 1.0]),
        reading,
    )


@pytest.mark.parametrize("density", [0.1, 1.0])  # a lexicon's few words (the used rows only), or dense features
def test_the_two_readings(density: float, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(4, 50)) * (rng.random((4, 50)) < density)
    sigmoid = head("sigmoid")
    logits = np.maximum(features @ sigmoid.hidden_w + sigmoid.hidden_b, 0) @ sigmoid.out_w + sigmoid.out_b
    np.testing.assert_allclose(sigmoid.outputs(features), logits, atol=1e-10)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(head("softmax").outputs(features), log_softmax, atol=1e-10)
    np.testing.assert_allclose(sigmoid.quality(features), 1 / (1 + np.exp(-(1.5 * logits - 0.2))), atol=1e-10)

    sigmoid.save(tmp_path / "head.npz")
    assert RewardHead.load(tmp_path / "head.npz").reading == "sigmoid"
    with np.load(tmp_path / "head.npz") as saved:
        np.savez(tmp_path / "legacy.npz", **{k: v for k, v in saved.items() if k != "reading"})
    # Written before per-expert heads: a distilled one, read through the softmax.
    np.testing.assert_allclose(RewardHead.load(tmp_path / "legacy.npz").outputs(features), log_softmax, atol=1e-10)


def test_the_lazy_first_layer_optimiser_is_adamw_on_the_rows_it_is_given() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    reference = torch.nn.Parameter(weight.clone())
    adamw = torch.optim.AdamW([reference], lr=LEARNING_RATE, weight_decay=0.1)
    lazy = LazyAdamW(weight.clone(), 0.1)
    rows = torch.tensor([0, 2, 5])
    for _ in range(3):
        grad = torch.randn(6, 4)
        reference.grad = grad
        adamw.step()
        lazy.step(torch.arange(6), grad)
    torch.testing.assert_close(lazy.weight, reference.detach())
    before = lazy.weight.clone()
    lazy.step(rows, torch.randn(3, 4))
    untouched = torch.tensor([1, 3, 4])
    torch.testing.assert_close(lazy.weight[untouched], before[untouched])  # rows a batch did not use stay put
    assert not torch.allclose(lazy.weight[rows], before[rows])


@pytest.mark.parametrize("partial", [False, True])
def test_fit_chooses_a_cheap_feature_kind_and_records_its_search(
    partial: bool, router_cache: Path, tmp_path: Path
) -> None:
    data = made_up(partial=partial)
    router = RewardDistilledRouter([ExpertProfile("alpha"), ExpertProfile("beta")])
    router.fit(data.of_split("train"), data.of_split("dev"))
    assert router.manifest is not None
    params, metrics = router.manifest.params, router.manifest.metrics
    assert params["features"] in CHEAP_KINDS and router.inline
    search = params["search"]
    assert {trial["features"] for trial in search} == set(CHEAP_KINDS)
    chosen = max(search, key=lambda trial: trial["score"])
    assert {k: params[k] for k in chosen if k != "score"} == {k: v for k, v in chosen.items() if k != "score"}
    assert metrics["dev_log_likelihood" if partial else "dev_auc"] == chosen["score"]
    if partial:
        assert params["objective"] == "bce" and all(trial["objective"] == "bce" for trial in search)
    else:
        assert "kl" in {trial["objective"] for trial in search}

    router.save(tmp_path / "router")
    loaded = load_router(tmp_path / "router", [ExpertProfile("beta"), ExpertProfile("alpha")])
    test = data.of_split("test")
    quality = loaded.score(test.queries.tolist())
    np.testing.assert_allclose(quality, router.score(test.queries.tolist()), atol=1e-6)
    assert np.all((quality >= 0) & (quality <= 1))
    truth = np.nan_to_num(test.scores, nan=0.5)
    assert truth[np.arange(len(test)), quality.argmax(axis=1)].mean() > 0.75
