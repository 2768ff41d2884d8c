"""Every dataset-trained family trains on a JSONL of queries and scores alone: no `domain`, no `tags`, no `answers`.

bert-domain and skill-based route by labels, which they discover here (routers/discovery.py); the test data has
two kinds of question, each answered well by one expert only, so discovered labels that route well must
separate them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from routers import FAMILIES, ExpertProfile, load_router, router_class
from routers.dataset import RoutingDataset
from routers.discovery import cluster_counts, dev_error, discovered_labels, given_labels, route_labels
from training.dataset import load_dataset
from training.train import train_router

DATASET_FAMILIES = [family for family in FAMILIES if not router_class(family).experts_from_config]
EXPERTS = [ExpertProfile("alpha"), ExpertProfile("beta")]
MATHS = [
    "Compute the derivative of {a}x^{b} + {c}x with respect to x.",
    "What is the integral of x^{b} from 0 to {a}?",
    "Solve the equation {a}x + {c} = {b} for x.",
    "Find the determinant of the matrix [[{a}, {b}], [{c}, {a}]].",
]
HISTORY = [
    "Which emperor ruled Rome in the year {a}{b} AD, and what wars did he fight?",
    "What caused the fall of the {dynasty} dynasty in ancient China?",
    "Describe the trade routes of the medieval {dynasty} kingdom.",
    "Which treaty ended the war between {dynasty} and its neighbours in the {a}th century?",
]
DYNASTIES = ["Han", "Tang", "Ming", "Song", "Qing", "Habsburg", "Ottoman", "Tudor"]


def label_free_rows(n: int = 200) -> list[dict]:
    """Maths questions only alpha answers well, history ones only beta does (10% noise); nothing else."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        is_maths = i % 2 == 0
        text = rng.choice(MATHS if is_maths else HISTORY).format(
            a=rng.randint(2, 9), b=rng.randint(2, 9), c=rng.randint(1, 9), dynasty=rng.choice(DYNASTIES)
        )
        alpha_right = is_maths != (rng.random() < 0.1)
        rows.append(
            {
                "query": f"{text} (#{i})",
                "scores": {"alpha": float(alpha_right), "beta": float(not alpha_right)},
                "costs": {"alpha": 0.002, "beta": 0.001},
            }
        )
    return rows


@pytest.fixture(scope="module")
def label_free_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("label-free") / "queries_and_scores.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in label_free_rows()))
    return path


def test_the_jsonl_has_no_labels(label_free_jsonl: Path) -> None:
    data = load_dataset(label_free_jsonl)
    assert not data.domains.any() and not any(data.tags) and data.answers is None
    train, dev = data.of_split("train"), data.of_split("dev")
    assert given_labels(train, dev, "domain") is None and given_labels(train, dev, "tags") is None


@pytest.mark.parametrize("family", DATASET_FAMILIES)
def test_every_family_trains_without_labels(
    family: str, label_free_jsonl: Path, router_cache: Path, tmp_path: Path
) -> None:
    # 60 train and 60 dev queries: a few fine-tuning steps for bert-domain, two clusters to discover.
    train_router(family, tmp_path / family, dataset=label_free_jsonl, limit=60)
    manifest = json.loads((tmp_path / family / "router.json").read_text())
    assert manifest["family"] == family and manifest["experts"] == ["alpha", "beta"]
    if family == "bert-domain":
        assert manifest["params"]["domain_labels"].startswith(("query-", "success-"))
    if family == "skill-based":
        assert manifest["params"]["skill_vocabulary"].startswith(("query-", "success-"))
        assert manifest["params"]["features"] in ("static+lexical", "static")  # chosen among the cheap kinds

    router = load_router(tmp_path / family, list(reversed(EXPERTS)))  # columns follow the manifest
    ask = router.decide([{"role": "user", "content": "What is the integral of x^3 from 0 to 5?"}])
    assert ask.chosen == "alpha" and ask.router == family
    ask = router.decide([{"role": "user", "content": "What caused the fall of the Ming dynasty in ancient China?"}])
    assert ask.chosen == "beta"
    test = load_dataset(label_free_jsonl).of_split("test")
    picks = router.score(test.queries.tolist()).argmax(axis=1)
    assert test.scores[np.arange(len(test)), picks].mean() > 0.8


def two_kinds(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings in two well-separated directions; expert 0 right on the first kind, expert 1 on the second."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n) % 2
    x = np.eye(8)[kind] + 0.05 * rng.standard_normal((n, 8))
    scores = np.stack([kind == 0, kind == 1], axis=1).astype(float)
    return x / np.linalg.norm(x, axis=1, keepdims=True), scores


def dataset(scores: np.ndarray, domains: list[str] | None = None) -> RoutingDataset:
    n = len(scores)
    return RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object),
        experts=("a", "b"),
        scores=scores,
        costs=np.tile([0.002, 0.001], (n, 1)),
        tags=((),) * n,
        domains=np.array(domains or [""] * n, dtype=object),
        split=np.array(["train"] * n),
    )


def test_discovered_clusters_follow_the_queries_and_the_experts_that_succeed() -> None:
    train_x, train_scores = two_kinds(200)
    dev_x, _ = two_kinds(60, seed=1)
    assert cluster_counts(200) == [4, 8] and cluster_counts(30) == [2]
    found = discovered_labels(train_x, train_scores, dev_x)
    assert [labels.name for labels in found] == ["query-4", "query-8", "success-4", "success-8"]
    for labels in found:
        assert labels.train.shape == (200,) and labels.dev.shape == (60,)
        # No cluster mixes the two kinds, on train or on dev (assigned by the same rule).
        for x, names in ((train_x, labels.train), (dev_x, labels.dev)):
            kind = x.argmax(axis=1)
            assert all(len(set(kind[names == name])) == 1 for name in set(names))


def test_given_labels_are_used_when_every_train_query_has_one() -> None:
    x, scores = two_kinds(200)
    kinds = ["first" if row[0] else "second" for row in scores]
    rows = {f"q{i}": i for i in range(200)}

    def embed(texts: list[str]) -> np.ndarray:
        return x[[rows[text] for text in texts]]

    labels, errors = route_labels(dataset(scores, kinds), dataset(scores[:60], kinds[:60]), "domain", embed)
    assert labels.name == "domain" and labels.classes == ["first", "second"] and errors == {}
    assert list(labels.dev) == kinds[:60]

    partly = ["", *kinds[1:]]  # one train query without a domain: the labels are discovered
    labels, errors = route_labels(dataset(scores, partly), dataset(scores[:60], kinds[:60]), "domain", embed)
    assert set(errors) == {"query-4", "query-8", "success-4", "success-8"} and labels.name in errors
    assert errors[labels.name] == min(errors.values())
    picked = np.array([labels.classes.index(name) for name in labels.train])
    kind = x.argmax(axis=1)
    assert all(len(set(kind[picked == cluster])) == 1 for cluster in set(picked))


def test_dev_error_is_the_brier_score_of_every_expert() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert dev_error(np.array([[0.5, 0.0], [0.0, 1.0]]), dataset(scores)) == pytest.approx((0.25 + 1.0) / 4)
    assert dev_error(scores, dataset(scores)) == 0.0
