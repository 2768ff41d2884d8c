"""`moe router train` keeps the trained router's cost-quality frontier in its manifest (`params.cost_quality`, what
the dashboard's evaluation view plots): replayed on the data's test split, else on dev, never invented for a router
whose experts the data does not score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from gateway.ui.api_router import _curve
from routers import Manifest
from training.cli import app
from training.dataset import load_dataset
from training.evaluate import Setting, evaluate, kept_frontier, load_router_candidates
from training.train import train_router

TOPICS = ("algebra", "poetry", "chemistry")
WORDS = {"algebra": "solve the equation for x", "poetry": "write a rhyming poem", "chemistry": "balance the reaction"}
COSTS = {"big": 2e-3, "poet": 5e-4, "tiny": 1e-4}


def routing_jsonl(path: Path, n: int = 120, splits: tuple[str, ...] = ("train", "train", "dev", "test")) -> Path:
    """A dear expert right on most questions, a mid-priced one right on poetry only, a cheap one right on few: the
    cheaper each expert, the less it gets right, so the frontier has several settings."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        topic = TOPICS[i % 3]
        rows.append(
            {
                "query": f"Question {i}: {WORDS[topic]} {topic} number {i % 7}",
                "scores": {
                    "big": float(rng.random() < 0.85),
                    "poet": float(topic == "poetry"),
                    "tiny": float(rng.random() < 0.3),
                },
                "costs": COSTS,
                "domain": topic,
                "split": splits[i % len(splits)],
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_monotone_frontier(points: list[dict[str, float]]) -> None:
    assert points, "no cost-quality points kept"
    costs, accuracies = [p["cost"] for p in points], [p["accuracy"] for p in points]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)  # cost ascending
    assert accuracies == sorted(accuracies) and len(set(accuracies)) == len(accuracies)  # each dearer one is better
    assert all(0 <= a <= 1 for a in accuracies) and all(c >= 0 for c in costs)
    assert all(p["lambda"] >= 0 for p in points)


def test_a_trained_artifact_keeps_its_test_split_frontier(tmp_path: Path, router_cache: Path) -> None:
    data = routing_jsonl(tmp_path / "routing.jsonl")
    out = tmp_path / "router"
    args = ["train", "--family", "skill-based", "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"{len(Manifest.read(out).params['cost_quality'])} frontier points on the test split" in result.output

    params = Manifest.read(out).params
    assert (params["cost_quality_split"], params["cost_quality_unit"]) == ("test", "USD per 1k queries")
    points = params["cost_quality"]
    assert_monotone_frontier(points)
    assert len(points) >= 2  # from the poet's topic to the dear expert: a curve, not one point
    # The same evaluation as `moe router eval` on the test split, rounded: not the dev split's, not another measure.
    dataset = load_dataset(str(data))
    routers, skipped = load_router_candidates([out], dataset)
    assert not skipped
    replayed = evaluate(routers, dataset.of_split("test"), latency_queries=0)["candidates"][0]["frontier"]
    assert points == kept_frontier(replayed, "test")["cost_quality"]
    assert max(p["cost"] for p in points) <= 1000 * COSTS["big"]  # per 1k queries, as the dashboard plots it
    assert min(p["cost"] for p in points) >= 1000 * COSTS["tiny"]
    # The dashboard reads every point, cost per 1k as it is.
    assert [(c.cost_per_1k, c.quality) for c in _curve(points)] == [(p["cost"], p["accuracy"]) for p in points]


def test_data_without_a_test_split_is_replayed_on_dev(tmp_path: Path, router_cache: Path) -> None:
    data = routing_jsonl(tmp_path / "routing.jsonl", splits=("train", "train", "dev"))
    trained = train_router("skill-based", tmp_path / "router", dataset=str(data))
    params = Manifest.read(trained.directory).params
    assert params["cost_quality_split"] == "dev"
    assert_monotone_frontier(params["cost_quality"])


def test_a_router_between_experts_the_data_does_not_score_keeps_no_curve(tmp_path: Path, router_cache: Path) -> None:
    # embedding-domain routes between the default config's experts; the data scores big, poet and tiny.
    trained = train_router("embedding-domain", tmp_path / "router", dataset=str(routing_jsonl(tmp_path / "r.jsonl")))
    params = Manifest.read(trained.directory).params
    assert not {"cost_quality", "cost_quality_split", "cost_quality_unit"} & set(params)


def test_kept_points_are_rounded_and_thinned_to_a_strict_frontier() -> None:
    points = [
        Setting(0.0, 0.30000004, 0.71234567),
        Setting(0.123456, 0.1234449, 0.5),
        Setting(0.2, 0.1234441, 0.49996),  # the same point as the one before once rounded: dropped
        Setting(7.0, 0.05, 0.2),
    ]
    kept = kept_frontier([s.to_json() for s in points], "test")
    assert kept["cost_quality"] == [
        {"lambda": 7.0, "cost": 0.05, "accuracy": 0.2},
        {"lambda": 0.1235, "cost": 0.1234, "accuracy": 0.5},
        {"lambda": 0.0, "cost": 0.3, "accuracy": 0.7123},
    ]
    assert kept["cost_quality_split"] == "test"


def test_a_limited_run_replays_as_many_test_questions(tmp_path: Path, router_cache: Path) -> None:
    data = routing_jsonl(tmp_path / "routing.jsonl", n=600)  # 150 test questions
    trained = train_router("skill-based", tmp_path / "router", dataset=str(data), limit=60)
    points = Manifest.read(trained.directory).params["cost_quality"]
    assert_monotone_frontier(points)
    assert all(abs(p["accuracy"] * 60 - round(p["accuracy"] * 60)) < 0.01 for p in points)  # k right out of 60
