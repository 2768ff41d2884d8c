"""Offline evaluation: curve metrics checked by hand on tiny data, and `moe router eval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from routers.dataset import RoutingDataset
from training.baselines import build_baselines
from training.evaluate import (
    Setting,
    accuracy_at,
    area_under,
    cost_at,
    curve_metrics,
    envelope,
    evaluate,
    frontier,
    overall_frontier,
    sweep,
)


def test_frontier_envelope_and_interpolation() -> None:
    settings = [
        Setting(0, 0.1, 0.25),
        Setting(0, 0.5, 0.5),
        Setting(0, 0.6, 0.45),
        Setting(0, 1.0, 0.75),
        Setting(0, 0.3, 0.30),
    ]
    assert [(s.cost, s.accuracy) for s in frontier(settings)] == [(0.1, 0.25), (0.3, 0.30), (0.5, 0.5), (1.0, 0.75)]
    hull = envelope(settings)  # (0.3, 0.30) lies under the chord from (0.1, 0.25) to (0.5, 0.5)
    assert hull.tolist() == [[0.1, 0.25], [0.5, 0.5], [1.0, 0.75]]
    assert accuracy_at(hull, 0.75) == pytest.approx(0.625)
    assert accuracy_at(hull, 0.05) is None and accuracy_at(hull, 2.0) == 0.75
    assert cost_at(hull, 0.6) == pytest.approx(0.7)
    assert cost_at(hull, 0.2) == 0.1 and cost_at(hull, 0.8) is None
    # (0.25 + 0.5) / 2 * 0.4 + (0.5 + 0.75) / 2 * 0.5 = 0.4625 over a 0.9 wide axis; 0 left of 0.1.
    assert area_under(hull, 0.1, 1.0) == pytest.approx(0.4625 / 0.9)
    assert area_under(hull, 0.0, 1.0) == pytest.approx(0.4625, abs=1e-3)


def tiny_dataset() -> RoutingDataset:
    # Experts a, b, c at $1, $0.5, $0.1 per 1k queries; each query is answered right by a prefix of them.
    scores = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float)
    return RoutingDataset(
        queries=np.array(["q0", "q1", "q2", "q3"], dtype=object),
        experts=("a", "b", "c"),
        scores=scores,
        costs=np.tile([1e-3, 5e-4, 1e-4], (4, 1)),
        tags=((),) * 4,
        domains=np.full(4, "", dtype=object),
        split=np.full(4, "train"),
    )


class Perfect:
    """Predicts the true scores: its curve is worked out by hand below."""

    name, kind, experts, fixed_lambda = "perfect", "router", ("a", "b", "c"), None

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        return np.array([1e-3, 5e-4, 1e-4])

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return data.scores


def test_evaluate_metrics_by_hand() -> None:
    data = tiny_dataset()
    report = evaluate([Perfect(), *build_baselines(["single", "oracle"], data)], data, latency_queries=0)
    assert report["best_single"] == {"name": "a", "accuracy": 0.75, "cost": pytest.approx(1.0)}
    assert report["oracle"] == {"accuracy": 0.75, "cost": pytest.approx(0.425)}  # c, b, a, c
    perfect = report["candidates"][0]
    # lam 0: all a; small lam: the oracle's choice; lam in (1.11, 2.5): c, b, c, c; beyond: all c.
    assert [(p["cost"], p["accuracy"]) for p in perfect["frontier"]] == [
        pytest.approx((0.1, 0.25)),
        pytest.approx((0.2, 0.5)),
        pytest.approx((0.425, 0.75)),
    ]
    assert perfect["accuracy_at_half_cost"] == pytest.approx(0.75)
    assert perfect["cost_at_95_accuracy"] == pytest.approx(0.2 + 0.2125 / 0.25 * 0.225)
    assert perfect["auc"] == pytest.approx((0.0375 + 0.140625 + 0.75 * 0.575) / 0.9, abs=1e-4)
    assert perfect["oracle_gap"] == pytest.approx(0.0)
    single_c = next(r for r in report["candidates"] if r["name"] == "single:c")
    assert single_c["auc"] is None and single_c["oracle_gap"] == pytest.approx(0.5)
    assert [f["name"] for f in report["frontier"]] == ["perfect"] * 3  # ties go to the first candidate


class Undecided:
    """Rates both experts alike and expects them to cost the same: only recorded costs can tell them apart."""

    name, kind, experts, fixed_lambda = "undecided", "router", ("x", "y"), None

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        return np.array([1.5e-3, 1.5e-3])

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return np.full((len(data), 2), 0.5)


def test_recorded_cost_protocol_lets_a_wrong_answers_cost_steer_the_choice() -> None:
    # x is right on q0, q1 and y on q2, q3; a wrong answer rambles and costs twice a right one.
    scores = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    data = RoutingDataset(
        queries=np.array(["q0", "q1", "q2", "q3"], dtype=object),
        experts=("x", "y"),
        scores=scores,
        costs=np.where(scores == 1, 1e-3, 2e-3),
        tags=((),) * 4,
        domains=np.full(4, "", dtype=object),
        split=np.full(4, "test"),
    )
    undecided = evaluate([Undecided()], data, latency_queries=0)["candidates"][0]
    assert undecided["max_accuracy"] == pytest.approx(0.5)  # before routing it can only guess
    recorded = undecided["recorded_cost"]
    assert recorded["max_accuracy"] == pytest.approx(1.0) and recorded["cost_at_max_accuracy"] == pytest.approx(1.0)
    assert recorded["oracle_gap"] == pytest.approx(0.0)


def test_eval_cli_on_a_jsonl_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cli import app

    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    topics = ["algebra", "poetry", "chemistry"]
    rows = []
    for i in range(60):
        topic = topics[i % 3]
        rows.append(
            {
                "query": f"question {i} about {topic}",
                "scores": {
                    "big": float(rng.random() < 0.8),
                    "poet": float(topic == "poetry"),
                    "tiny": float(rng.random() < 0.3),
                },
                "costs": {"big": 0.002, "poet": 0.0005, "tiny": 0.0001},
                "domain": topic,
                "split": ["train", "train", "dev", "test"][i % 4],
            }
        )
    data = tmp_path / "routing.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            str(data),
            "--experts",
            "big,poet,tiny",
            "--baselines",
            "single,oracle,true-label,knn",
            "--knn-k",
            "5",
            "--latency-queries",
            "3",
            "--json",
            str(out_json),
            "--png",
            str(out_png),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report["n"] == 15 and report["experts"] == ["big", "poet", "tiny"]
    names = {r["name"] for r in report["candidates"]}
    assert {"single:big", "oracle", "true-label", "knn-5"} <= names
    knn = next(r for r in report["candidates"] if r["name"] == "knn-5")
    assert knn["latency_ms"]["n"] == 3 and knn["points"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_equal_best_accuracy_goes_to_the_cheaper_setting() -> None:
    # The dearer of the two best settings comes first: a plain max over accuracy would report it.
    settings = [Setting(0.0, 1.0, 0.6), Setting(0.5, 0.4, 0.6), Setting(2.0, 0.1, 0.3)]
    metrics = curve_metrics(settings, best_cost=1.0, best_accuracy=0.6, axis=(0.1, 1.0), oracle=0.9)
    assert metrics["max_accuracy"] == 0.6 and metrics["cost_at_max_accuracy"] == 0.4
    assert metrics["oracle_gap"] == pytest.approx(0.3)
    assert [(p["cost"], p["accuracy"]) for p in metrics["frontier"]] == [(0.1, 0.3), (0.4, 0.6)]
    assert metrics["cost_at_95_accuracy"] == pytest.approx(0.1 + (0.57 - 0.3) / 0.3 * 0.3)
    assert metrics["accuracy_at_half_cost"] == 0.6  # the envelope is flat beyond its last point
    pinned = curve_metrics(settings[1:2], 1.0, 0.6, (0.1, 1.0), 0.9, curve=False)
    assert pinned["auc"] is None and pinned["cost_at_max_accuracy"] == 0.4


def three_expert_data(scores: list[list[float]], costs: list[float]) -> RoutingDataset:
    n = len(scores)
    return RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object), experts=("a", "b", "c"),
        scores=np.array(scores, dtype=float), costs=np.tile(costs, (n, 1)), tags=((),) * n,
        domains=np.full(n, "", dtype=object), split=np.full(n, "test"),
    )


def test_sweep_keeps_each_distinct_point_once_with_its_smallest_lambda() -> None:
    # The policy sees a, b, c as $3, $2, $1 per 1k queries and predicts 0.9, 0.7, 0.3: lam 0.1 picks a, 0.3 b, 0.5 c.
    quality, expected = np.array([[0.9, 0.7, 0.3]] * 2), np.array([3e-3, 2e-3, 1e-3])
    lams = [0.0, 0.1, 0.3, 0.35, 0.5]
    # Recorded costs all equal: three points of one cost, best accuracy first.
    same_cost = three_expert_data([[1, 1, 0], [1, 0, 0]], [1e-4, 1e-4, 1e-4])
    assert [(s.lam, s.cost, s.accuracy) for s in sweep(quality, expected, same_cost, lams)] == [
        (0.0, pytest.approx(0.1), 1.0), (0.3, pytest.approx(0.1), 0.5), (0.5, pytest.approx(0.1), 0.0)]
    # Every answer right: three points of one accuracy, cheapest first, however close their costs.
    same_accuracy = three_expert_data([[1, 1, 1], [1, 1, 1]], [4e-4, 3e-4, 2e-4])
    assert [(s.lam, s.cost) for s in sweep(quality, expected, same_accuracy, lams)] == [
        (0.5, pytest.approx(0.2)), (0.3, pytest.approx(0.3)), (0.0, pytest.approx(0.4))]


def test_envelope_edges() -> None:
    # Far from cost 0: (11, 0.6) lies under the chord from (10, 0.5) to (12, 0.75).
    assert envelope([Setting(0, 10, 0.5), Setting(0, 11, 0.6), Setting(0, 12, 0.75)]).tolist() == [[10, 0.5], [12, 0.75]]
    # Concave throughout: every point stays.
    concave = [Setting(0, 0.1, 0.2), Setting(0, 0.2, 0.5), Setting(0, 0.3, 0.7), Setting(0, 0.4, 0.8)]
    assert envelope(concave).tolist() == [[0.1, 0.2], [0.2, 0.5], [0.3, 0.7], [0.4, 0.8]]
    # A point on the chord adds nothing: a random mix of its neighbours reaches it.
    assert envelope([Setting(0, 1, 2), Setting(0, 2, 4), Setting(0, 3, 6)]).tolist() == [[1, 2], [3, 6]]
    assert envelope([]).shape == (0, 2)
    # At equal cost the better point is the frontier's.
    assert [(s.cost, s.accuracy) for s in frontier([Setting(0, 0.5, 0.4), Setting(1, 0.5, 0.6)])] == [(0.5, 0.6)]


def test_reading_the_envelope_at_its_ends() -> None:
    hull = envelope([Setting(0, 0.5, 0.2), Setting(0, 1.0, 0.6)])
    assert accuracy_at(hull, 0.5) == 0.2 and accuracy_at(hull, 0.3) is None  # 0.3 > its first accuracy, not cost
    assert cost_at(hull, 0.6) == 1.0 and cost_at(hull, 0.2) == 0.5
    assert area_under(hull, 0.75, 0.75) == pytest.approx(0.4)  # an empty axis: the value there
    assert area_under(hull, 0.25, 0.25) == 0.0  # ...which is 0 where the candidate cannot run that cheaply


def test_curve_metrics_read_the_half_cost_point_off_the_best_singles_cost() -> None:
    settings = [Setting(0.0, 1.0, 0.6), Setting(0.5, 0.4, 0.6), Setting(2.0, 0.1, 0.3)]
    metrics = curve_metrics(settings, best_cost=0.4, best_accuracy=0.6, axis=(0.1, 1.0), oracle=0.9)
    assert metrics["accuracy_at_half_cost"] == pytest.approx(0.3 + (0.2 - 0.1) / 0.3 * 0.3)
    assert metrics["auc"] is not None  # a curve unless told it is one pinned lam


def test_the_overall_frontier_leaves_references_out_and_names_each_point() -> None:
    results = [
        {"name": "router", "kind": "router", "points": [{"lambda": 0.5, "cost": 0.2, "accuracy": 0.5},
                                                          {"lambda": 0.0, "cost": 0.9, "accuracy": 0.7}]},
        {"name": "single:a", "kind": "baseline", "points": [{"lambda": 0.0, "cost": 0.5, "accuracy": 0.6}]},
        {"name": "pool-readme", "kind": "reference", "points": [{"lambda": 0.0, "cost": 0.1, "accuracy": 0.9}]},
    ]
    assert overall_frontier(results) == [
        {"name": "router", "lambda": 0.5, "cost": 0.2, "accuracy": 0.5},
        {"name": "single:a", "lambda": 0.0, "cost": 0.5, "accuracy": 0.6},
        {"name": "router", "lambda": 0.0, "cost": 0.9, "accuracy": 0.7},
    ]
