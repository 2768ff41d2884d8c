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


def test_policy_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="lambda must be a finite number >= 0, not -1"):
        CostPolicy(lam=-1)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0, not inf"):
        CostPolicy(margin=float("inf"))
    with pytest.raises(ValueError, match=r"expected_cost has shape \(2,\), the quality \(3,\)"):
        CostPolicy().rank(QUALITY[0], COST[:2])
    with pytest.raises(ValueError, match="expected_cost has shape"):
        CostPolicy().rank(QUALITY[0], 1e-3)  # one number for every expert is no cost per expert
    with pytest.raises(ValueError, match="expected_cost has shape"):
        CostPolicy().choose(QUALITY, np.tile(COST, (3, 1)))  # a cost row per query, but for three queries


def test_margin_rule_takes_cheap_over_better_whatever_the_quality_gap() -> None:
    # Both within the margin: the cheaper wins even though its quality is well below (0.55 vs 0.7).
    assert CostPolicy(margin=0.2).choose(np.array([[0.7, 0.55]]), np.array([2e-4, 1e-4])).tolist() == [1]
    # On the margin's edge (0.75 - 0.25 = 0.5, exactly): eligible.
    quality, cost = np.array([0.75, 0.5]), np.array([1e-3, 1e-4])
    assert CostPolicy(margin=0.25).choose(quality[None], cost).tolist() == [1]
    assert CostPolicy(margin=0.25).rank(quality, cost).tolist() == [1, 0]


def test_rank_keeps_the_configured_order_among_ties_however_many_experts() -> None:
    rng = np.random.default_rng(0)
    quality = np.round(rng.random(40), 1)  # many equal qualities
    cost = np.full(40, 1e-4)
    for policy in (CostPolicy(lam=0.5), CostPolicy(margin=0.0)):
        ranked = policy.rank(quality, cost).tolist()
        assert ranked == sorted(range(40), key=lambda i: -quality[i])  # sorted() is stable: ties by index


def test_the_policy_takes_boolean_or_integer_predictions() -> None:
    """Correctness flags (an oracle's, a classifier's) are predictions too."""
    right = np.array([[True, False, True], [False, False, True]])
    for quality in (right, right.astype(int)):
        assert CostPolicy(lam=0.0).choose(quality, COST).tolist() == [0, 2]
        assert CostPolicy(lam=1.0).choose(quality, COST).tolist() == [2, 2]
        assert CostPolicy(margin=0.0).rank(quality[0], COST).tolist() == [2, 0, 1]
        assert CostPolicy(lam=0.0).rank(quality[0], COST).tolist() == [0, 2, 1]
        assert len(lambda_grid(quality, COST)) > 1


def test_prices_become_usd_per_query_exactly() -> None:
    experts = [ExpertProfile("a", 3.0), ExpertProfile("b", 0.15)]
    assert expected_cost(experts, None).tolist() == pytest.approx([3e-3, 1.5e-4], rel=1e-12)


def test_parse_knob_values_and_messages() -> None:
    assert parse_knob("1.5") == CostPolicy(lam=1.5)
    assert parse_knob("M2") == CostPolicy(margin=2.0)
    assert parse_knob(".25") == CostPolicy(lam=0.25)
    longest = "0." + "0" * 47 + "1"
    assert len(longest) == 50 and parse_knob(longest) == CostPolicy(lam=1e-48)
    with pytest.raises(ValueError, match="a knob has at most 50 characters"):
        parse_knob(longest + "1")
    with pytest.raises(ValueError, match=r"\(known: q90, q95\)"):
        parse_knob("q99", {"q95": 0.4, "q90": 0.7})
    with pytest.raises(ValueError, match=r"\(known: none: the router was not calibrated\)"):
        parse_knob("q95", None)
    with pytest.raises(ValueError, match=r"bad cost knob 'cheap': use a lambda \(0.3\)"):
        parse_knob("cheap")


def test_the_lambda_grid_has_no_more_points_than_asked() -> None:
    rng = np.random.default_rng(1)
    quality, cost = rng.random((300, 2)), rng.random((300, 2)) * 1e-3  # about 300 distinct crossings
    for points in (5, 20, 200):
        assert len(lambda_grid(quality, cost, points=points)) == points
    assert len(lambda_grid(quality, cost)) == 200  # the default
    assert lambda_grid(quality, np.full(2, 1e-3)).tolist() == [0.0]  # one price: nothing to trade


def test_the_lambda_grid_reaches_every_choice_of_many_queries_and_ends_at_the_cheapest() -> None:
    """60 queries, each with its own crossing: the grid samples every query's (below GRID_SAMPLE_ROWS rows)."""
    rng = np.random.default_rng(2)
    quality = np.stack([np.full(60, 0.9), 0.9 - rng.random(60) * 0.5], axis=1)
    cost = np.stack([np.full(60, 1e-3), rng.random(60) * 5e-4], axis=1)
    grid = lambda_grid(quality, cost)
    seen = {tuple(CostPolicy(lam=float(lam)).choose(quality, cost)) for lam in grid}
    assert len(seen) == 61  # all dear, then one query more to the cheap expert at each crossing
    assert CostPolicy(lam=float(grid[-1])).choose(quality, cost).tolist() == [1] * 60


def test_the_last_lambda_sends_everything_to_the_cheapest_even_past_a_crossing_of_one() -> None:
    # Crossings at exactly 1.0 (0.25 quality for $0.25 per 1k queries) and at 0.2: the last lam must pass 1.0.
    quality = np.array([[0.75, 0.5], [0.75, 0.7]])
    cost = np.array([5e-4, 2.5e-4])
    grid = lambda_grid(quality, cost)
    assert CostPolicy(lam=float(grid[-1])).choose(quality, cost).tolist() == [1, 1]
    # Crossings far apart (0.1 and 5): the last lam must pass the largest, not twice the next one.
    quality = np.array([[0.75, 0.5], [0.75, 0.7], [0.8, 0.3]])
    cost = np.array([[5e-4, 2.5e-4], [5e-4, 0.0], [2e-4, 1e-4]])
    for points in (3, 200):  # with 3 points the grid holds only the smallest and the largest crossing
        last = float(lambda_grid(quality, cost, points=points)[-1])
        assert CostPolicy(lam=last).choose(quality, cost).tolist() == [1, 1, 1]


def test_calibration_trades_against_the_expected_cost_it_is_given() -> None:
    predicted, dev = synthetic_dev()
    # Told both experts cost the same, cost cannot change a choice: every target gets lam 0.
    same = calibrate(predicted, dev, {"q90": 0.9, "q100": 1.0}, expected_cost=np.full(2, 1e-3))
    assert same == {"q90": 0.0, "q100": 0.0}
    per_query = np.tile(dev.mean_cost(), (len(dev), 1))  # the same costs, given per query
    assert calibrate(predicted, dev, {"q90": 0.9}, expected_cost=per_query) == calibrate(predicted, dev, {"q90": 0.9})


def test_an_unreachable_target_gets_the_lambda_of_best_quality() -> None:
    predicted, dev = synthetic_dev()
    rows = np.arange(len(dev))
    table = calibrate(predicted, dev, {"q200": 2.0})
    qualities = {float(lam): dev.scores[rows, CostPolicy(lam=float(lam)).choose(predicted, dev.mean_cost())].mean()
                 for lam in lambda_grid(predicted, dev.mean_cost())}
    best = max(qualities.values())
    assert qualities[table["q200"]] == best
    assert table["q200"] == max(lam for lam, q in qualities.items() if q == best)  # ties: the larger lam


def test_calibration_takes_the_cheapest_lambda_by_recorded_cost_among_those_reaching_each_target() -> None:
    """The policy trades against expected costs, the table is judged on dev's recorded ones: they disagree here,
    so a larger lam is not always cheaper and the cheapest setting must really be searched for."""
    rng = np.random.default_rng(5)
    n, m = 60, 3
    scores = (rng.random((n, m)) < [0.8, 0.6, 0.4]).astype(float)
    dev = RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object), experts=("a", "b", "c"), scores=scores,
        costs=[1e-3, 5e-4, 1e-4] * rng.uniform(0.5, 1.5, (n, m)), tags=((),) * n, domains=np.full(n, "", dtype=object),
        split=np.full(n, "dev"),
    )
    predicted, expected = np.clip(scores + rng.normal(0, 0.3, scores.shape), 0, 1), rng.random((n, m)) * 1e-3
    targets = {"q40": 0.4, "q60": 0.6, "q80": 0.8, "q100": 1.0}
    table = calibrate(predicted, dev, targets, expected_cost=expected)
    rows, best_single = np.arange(n), dev.scores.mean(axis=0).max()
    settings = []
    for lam in lambda_grid(predicted, expected):
        chosen = CostPolicy(lam=float(lam)).choose(predicted, expected)
        settings.append((dev.scores[rows, chosen].mean(), dev.costs[rows, chosen].mean(), float(lam)))
    for name, fraction in targets.items():
        reaching = [s for s in settings if s[0] >= fraction * best_single - 1e-12]
        cheapest = min(s[1] for s in reaching)
        assert table[name] == max(lam for q, c, lam in reaching if c == cheapest), name
    assert len({table[name] for name in targets}) > 1


def test_calibration_counts_a_setting_exactly_at_the_target_as_reaching_it() -> None:
    # Both experts always right: every setting has exactly the best single expert's quality. The policy expects
    # b to be the cheaper, but dev recorded it as the dearer: lam 0 (all to a) is the cheapest way to q100.
    n = 10
    dev = RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object), experts=("a", "b"), scores=np.ones((n, 2)),
        costs=np.tile([1e-4, 1e-3], (n, 1)), tags=((),) * n, domains=np.full(n, "", dtype=object),
        split=np.full(n, "dev"),
    )
    predicted = np.tile([0.9, 0.8], (n, 1))
    assert calibrate(predicted, dev, {"q100": 1.0}, expected_cost=np.array([1e-3, 1e-4])) == {"q100": 0.0}
