"""The cost policy: the lambda and margin rules, rankings, calibration and the per-request knob."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from routers.base import ExpertProfile, Manifest, Router
from routers.dataset import RoutingDataset
from routers.policy import CostPolicy, calibrate, expected_cost, lambda_grid, parse_knob

QUALITY = np.array([[0.9, 0.7, 0.4], [0.5, 0.6, 0.55]])
COST = np.array([1e-3, 2e-4, 1e-5])  # USD per query: $1, $0.2, $0.01 per 1k queries


def test_lambda_zero_picks_the_best_predicted_quality() -> None:
    assert CostPolicy(lam=0).choose(QUALITY, COST).tolist() == [0, 1]


def test_large_lambda_picks_the_cheapest() -> None:
    assert CostPolicy(lam=1e3).choose(QUALITY, COST).tolist() == [2, 2]


def test_lambda_reads_in_usd_per_1k_queries() -> None:
    # Row 0: 0.9 - 0.3 * 1 = 0.6 < 0.7 - 0.3 * 0.2 = 0.64; row 1: 0.6 - 0.06 = 0.54 < 0.55 - 0.003.
    assert CostPolicy(lam=0.3).choose(QUALITY, COST).tolist() == [1, 2]
    assert CostPolicy(lam=0.3).rank(QUALITY[0], COST).tolist() == [1, 0, 2]


def test_margin_rule_takes_the_cheapest_within_the_margin() -> None:
    assert CostPolicy(margin=0.25).choose(QUALITY, COST).tolist() == [1, 2]
    assert CostPolicy(margin=0.0).choose(QUALITY, COST).tolist() == [0, 1]
    # Within the margin by cost, then the rest by quality: the fallback order the gateway uses.
    assert CostPolicy(margin=0.25).rank(QUALITY[0], COST).tolist() == [1, 0, 2]


def test_policy_rejects_negative_or_non_finite_knobs() -> None:
    with pytest.raises(ValueError):
        CostPolicy(lam=-1)
    with pytest.raises(ValueError):
        CostPolicy(margin=float("nan"))


def test_parse_knob() -> None:
    calibration = {"q90": 0.7, "q95": 0.4}
    assert parse_knob("0.3") == CostPolicy(lam=0.3)
    assert parse_knob("Q95", calibration) == CostPolicy(lam=0.4)
    assert parse_knob("m0.05") == CostPolicy(margin=0.05)
    with pytest.raises(ValueError, match="no calibrated cost knob 'q99'"):
        parse_knob("q99", calibration)
    with pytest.raises(ValueError, match="not calibrated"):
        parse_knob("q95", None)
    # float() takes most of these; a knob is recorded as sent, so it is a plain number, a margin or a target.
    for bad in ("cheap", "", "-1", "m", "0" * 51, "inf", "nan", "1_0", " 0.3", "0.3 ", "1e3", "q" + "9" * 60):
        with pytest.raises(ValueError):
            parse_knob(bad, calibration)


def synthetic_dev(n: int = 400, seed: int = 0) -> tuple[np.ndarray, RoutingDataset]:
    """A strong dear expert and a cheap one that is right on the easy half; predictions are noisy truth."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.5
    scores = np.stack([rng.random(n) < 0.8, easy & (rng.random(n) < 0.9)], axis=1).astype(float)
    costs = np.tile([1e-3, 1e-4], (n, 1))
    data = RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object),
        experts=("dear", "cheap"),
        scores=scores,
        costs=costs,
        tags=((),) * n,
        domains=np.full(n, "", dtype=object),
        split=np.full(n, "dev"),
    )
    return np.clip(scores + rng.normal(0, 0.2, scores.shape), 0, 1), data


def test_calibration_reaches_its_target_at_less_cost() -> None:
    predicted, dev = synthetic_dev()
    table = calibrate(predicted, dev, {"q90": 0.90, "q100": 1.0})
    best_single = dev.scores.mean(axis=0).max()
    rows = np.arange(len(dev))
    for name, fraction in (("q90", 0.90), ("q100", 1.0)):
        chosen = CostPolicy(lam=table[name]).choose(predicted, dev.mean_cost())
        assert dev.scores[rows, chosen].mean() >= fraction * best_single
    cost = lambda lam: dev.costs[rows, CostPolicy(lam=lam).choose(predicted, dev.mean_cost())].mean()  # noqa: E731
    assert table["q90"] > table["q100"] and cost(table["q90"]) < cost(table["q100"]) < dev.costs[:, 0].mean()


class FixedRouter(Router):
    family = "fixed"

    def fit(self, train, dev, **params):  # noqa: ANN001, ANN003, ANN201
        raise NotImplementedError

    def score(self, texts):  # noqa: ANN001, ANN201
        return np.tile([0.9, 0.7, 0.4], (len(texts), 1))

    def _save(self, directory):  # noqa: ANN001, ANN202
        raise NotImplementedError

    @classmethod
    def _load(cls, directory, manifest, experts):  # noqa: ANN001, ANN206
        raise NotImplementedError


def test_decide_takes_a_policy_with_manifest_costs_else_prices() -> None:
    experts = [ExpertProfile("big", 0.9), ExpertProfile("mid", 0.2), ExpertProfile("small", 0.01)]
    messages = [{"role": "user", "content": "hi"}]
    plain = FixedRouter(experts)
    assert [s.name for s in plain.decide(messages).ranked] == ["big", "mid", "small"]
    assert plain.decide(messages, CostPolicy(lam=0.3)).chosen == "mid"  # price per 1M tokens as $ per 1k queries
    assert expected_cost(experts, None).tolist() == pytest.approx([9e-4, 2e-4, 1e-5])
    manifest = Manifest("fixed", "fixed", "v1", "h", ["small", "mid", "big"], params={"mean_cost": [0.0, 0.0, 0.0]})
    measured = FixedRouter(experts, manifest)  # free experts: cost never changes the choice
    assert measured.decide(messages, CostPolicy(lam=100)).chosen == "big"


def test_the_lambda_grid_visits_every_choice_the_policy_can_make() -> None:
    """Between two neighbouring crossings every query keeps its choice; the grid must land in each such interval."""
    rng = np.random.default_rng(3)
    quality = np.round(rng.random((6, 4)), 1)  # rounded: ties in quality, which any lam > 0 breaks
    cost = rng.random((6, 4)) * 1e-3
    per_1k = cost * 1000
    crossings = sorted({
        (quality[i, a] - quality[i, b]) / (per_1k[i, a] - per_1k[i, b])
        for i in range(6) for a in range(4) for b in range(4)
        if quality[i, a] >= quality[i, b] and per_1k[i, a] > per_1k[i, b]
    })
    probes = [0.0, *((x + y) / 2 for x, y in zip(crossings, crossings[1:], strict=False)), crossings[-1] * 2]

    def choices(lams: Sequence[float]) -> set[tuple[int, ...]]:
        return {tuple(CostPolicy(lam=float(lam)).choose(quality, cost)) for lam in lams}

    assert choices(lambda_grid(quality, cost)) == choices(probes)
    assert len(choices(probes)) > 5


def test_margin_rule_breaks_a_cost_tie_toward_the_better_predicted_expert() -> None:
    # Experts 0 and 1 cost the same and are both within the margin of the best: 1 is predicted better.
    quality = np.array([[0.6, 0.7, 0.75], [0.7, 0.6, 0.75]])
    cost = np.array([1e-4, 1e-4, 1e-3])
    assert CostPolicy(margin=0.2).choose(quality, cost).tolist() == [1, 0]
    assert CostPolicy(margin=0.2).rank(quality[0], cost).tolist() == [1, 0, 2]
    assert CostPolicy(margin=0.2).rank(quality[1], cost).tolist() == [0, 1, 2]
    # Outside the margin, the rest follow by predicted quality, not by cost.
    assert CostPolicy(margin=0.0).rank(quality[0], cost).tolist() == [2, 1, 0]


def test_the_lambda_grid_breaks_a_quality_tie_toward_the_cheaper_expert() -> None:
    """Two experts predicted equally good, the first dearer: lam 0 keeps the first, any lam > 0 must reach the
    cheaper one, so the grid needs a point above 0 even though no quality is traded for the saving."""
    quality, cost = np.array([[0.5, 0.5]]), np.array([2e-3, 1e-3])
    grid = lambda_grid(quality, cost)
    assert grid[0] == 0.0 and (grid > 0).any()
    assert {int(CostPolicy(lam=float(lam)).choose(quality, cost)[0]) for lam in grid} == {0, 1}


def test_expected_cost_matches_the_manifests_costs_to_experts_by_name() -> None:
    experts = [ExpertProfile("big", 0.9), ExpertProfile("mid", 0.2), ExpertProfile("small", 0.01)]
    manifest = Manifest("fixed", "fixed", "v1", "h", ["small", "mid", "big"], params={"mean_cost": [1e-5, 3e-4, 2e-3]})
    assert expected_cost(experts, manifest).tolist() == [2e-3, 3e-4, 1e-5]
    assert expected_cost(experts[::-1], manifest).tolist() == [1e-5, 3e-4, 2e-3]
    # A manifest that misses one of the experts: every expert is priced from its price_per_mtok instead.
    partial = Manifest("fixed", "fixed", "v1", "h", ["small", "big"], params={"mean_cost": [1e-5, 2e-3]})
    assert expected_cost(experts, partial).tolist() == pytest.approx([9e-4, 2e-4, 1e-5])
    assert expected_cost(experts, Manifest("fixed", "fixed", "v1", "h", ["small", "mid", "big"])).tolist() == \
        pytest.approx([9e-4, 2e-4, 1e-5])
