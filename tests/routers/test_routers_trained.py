"""bert-domain, reward-distilled, skill-based: trained for real on small subsets, saved, reloaded, asked to route.

On the pool (small experts), a maths question must go to an expert strong at maths; on a JSONL of
made-up experts ("alpha" right on maths, "beta" on history), every family must learn that split
with no code change.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from routers import Decision, ExpertProfile, load_router
from tests.routers.families import FAMILIES, HISTORY, LIMIT, MATHS, SMALL, STRONG_AT_MATHS, Artifacts
from training.dataset import load_dataset


def ask(router_dir: Path, experts: list[ExpertProfile], text: str) -> Decision:
    return load_router(router_dir, experts).decide([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def _jsonl_routers(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("jsonl-routers")
    (root / "made_up.jsonl").write_text("".join(json.dumps(row) + "\n" for row in made_up_rows()))
    return Artifacts(root, dataset=root / "made_up.jsonl")


@pytest.fixture
def jsonl_artifacts(router_cache: Path, _jsonl_routers: Artifacts) -> Artifacts:
    return _jsonl_routers


def made_up_rows(n: int = 240) -> list[dict]:
    """Maths queries that only alpha answers well, history queries that only beta does; no tags."""
    rng = random.Random(0)
    maths = [
        "Compute the derivative of {a}x^{b} + {c}x with respect to x.",
        "What is the integral of x^{b} from 0 to {a}?",
        "Solve the equation {a}x + {c} = {b} for x.",
        "Find the determinant of the matrix [[{a}, {b}], [{c}, {a}]].",
        "How many prime numbers are there between {a} and {a}{b}?",
    ]
    history = [
        "Which emperor ruled Rome in the year {a}{b} AD, and what wars did he fight?",
        "What caused the fall of the {dynasty} dynasty in ancient China?",
        "Who led the revolution of {a}{c}{b} in France, and what did it change?",
        "Describe the trade routes of the medieval {dynasty} kingdom.",
        "Which treaty ended the war between {dynasty} and its neighbours in the {a}th century?",
    ]
    dynasties = ["Han", "Tang", "Ming", "Song", "Qing", "Habsburg", "Ottoman", "Tudor"]
    rows = []
    for i in range(n):
        is_maths = i % 2 == 0
        text = rng.choice(maths if is_maths else history).format(
            a=rng.randint(2, 9), b=rng.randint(2, 9), c=rng.randint(1, 9), dynasty=rng.choice(dynasties)
        )
        noisy = rng.random() < 0.1
        alpha_right = is_maths != noisy
        rows.append(
            {
                "query": f"{text} (#{i})",
                "scores": {"alpha": float(alpha_right), "beta": float(not alpha_right)},
                "costs": {"alpha": 0.002, "beta": 0.001},
                "domain": "maths" if is_maths else "history",
            }
        )
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_pool_router_routes_maths_to_a_maths_expert(family: str, pool_artifacts: Artifacts) -> None:
    directory = pool_artifacts[family]
    manifest = json.loads((directory / "router.json").read_text())
    assert manifest["family"] == family
    assert manifest["experts"] == SMALL
    assert len(manifest["data_hash"]) == 16 and manifest["version"]
    assert manifest["metrics"]["n_train"] == LIMIT[family]
    assert 0.3 < manifest["metrics"]["dev_accuracy"] <= manifest["metrics"]["dev_oracle"]
    mean_cost = manifest["params"]["mean_cost"]
    assert len(mean_cost) == len(SMALL) and all(cost > 0 for cost in mean_cost)
    assert mean_cost[SMALL.index("Phi-3-mini-4k-instruct")] == min(mean_cost)  # the cheapest model
    assert manifest["params"]["query_cost"] is True  # the pool knows what every answer cost
    calibration = manifest["params"]["calibration"]
    assert set(calibration) == {"q90", "q95", "q100"} and all(lam >= 0 for lam in calibration.values())

    experts = [ExpertProfile(name) for name in reversed(SMALL)]  # any order: columns follow the manifest
    router = load_router(directory, experts)
    scores = router.score([MATHS, HISTORY, "hello"])
    assert scores.shape == (3, len(SMALL))
    assert np.all((scores >= 0) & (scores <= 1))  # expected correctness
    np.testing.assert_allclose(router.score([HISTORY])[0], scores[1], atol=1e-5)
    maths = ask(directory, experts, MATHS)
    assert maths.chosen in STRONG_AT_MATHS
    assert maths.router == family and maths.version == manifest["version"]


def test_loading_without_a_trained_expert_fails(pool_artifacts: Artifacts) -> None:
    with pytest.raises(ValueError, match="mathstral-7B"):
        load_router(pool_artifacts["skill-based"], [ExpertProfile(name) for name in SMALL if name != "mathstral-7B"])


def test_skill_based_recruits_k_experts_and_names_an_aggregator(pool_artifacts: Artifacts, tmp_path: Path) -> None:
    directory = shutil.copytree(pool_artifacts["skill-based"], tmp_path / "skill-based")  # shared: edit a copy
    manifest = json.loads((directory / "router.json").read_text())
    assert manifest["params"]["k"] == 1 and manifest["params"]["skill_vocabulary"] == "tags"
    manifest["params"]["k"] = 2
    (directory / "router.json").write_text(json.dumps(manifest))
    decision = ask(directory, [ExpertProfile(name) for name in SMALL], MATHS)
    assert decision.recruited == [ranked.name for ranked in decision.ranked[:2]]
    assert decision.aggregator == manifest["params"]["aggregator"] in SMALL


@pytest.mark.parametrize("family", FAMILIES)
def test_jsonl_experts_route_with_no_code_change(family: str, jsonl_artifacts: Artifacts) -> None:
    directory = jsonl_artifacts[family]
    manifest = json.loads((directory / "router.json").read_text())
    assert manifest["experts"] == ["alpha", "beta"]
    assert manifest["params"]["mean_cost"] == pytest.approx([0.002, 0.001])
    experts = [ExpertProfile("alpha"), ExpertProfile("beta")]
    assert ask(directory, experts, "What is the integral of x^3 from 0 to 5?").chosen == "alpha"
    assert ask(directory, experts, "What caused the fall of the Ming dynasty in ancient China?").chosen == "beta"
    test = load_dataset(directory.parent / "made_up.jsonl").of_split("test")
    picks = load_router(directory, experts).score(test.queries.tolist()).argmax(axis=1)
    assert test.scores[np.arange(len(test)), picks].mean() > 0.8


def test_bert_domain_routes_on_an_int8_onnx_export_of_the_fine_tuned_classifier(pool_artifacts: Artifacts) -> None:
    import onnx

    from routers.bert_domain import CLASSIFIER_DIR, CLASSIFIER_GRAPH, predict_proba

    directory = pool_artifacts["bert-domain"]
    graph = directory / CLASSIFIER_DIR / CLASSIFIER_GRAPH
    assert graph.is_file()  # saved with it: routing needs no torch
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in onnx.load(graph).graph.node}
    router = load_router(directory, [ExpertProfile(name) for name in SMALL])
    texts = [MATHS, HISTORY, "hello", "word " * 200]  # the last one is cut at the classifier's max length
    logits = router.runner(texts)
    onnx_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    model, tokenizer = router.classifier
    float_probs = predict_proba(model, tokenizer, texts)
    np.testing.assert_array_equal(onnx_probs.argmax(axis=1), float_probs.argmax(axis=1))
    np.testing.assert_allclose(onnx_probs, float_probs, atol=0.01)  # 0.003 seen
