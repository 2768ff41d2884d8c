"""embedding-domain: trained through the CLI on a small subset, saved, loaded and asked to route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from routers import ExpertProfile, load_router
from routers.embedding_domain import EmbeddingDomainRouter, domain_routing
from routers.features import LEXICON_FILE
from training.cli import app
from training.dataset import load_dataset
from training.pool import default_pool_dir
from training.train import load_expert_profiles, stratified_sample

MATHS = "What is the integral of x^2 from 0 to 3?"
HISTORY = "Which ancient empire built the Great Wall of China, and during which dynasty was most of it constructed?"
# 30 questions per category: the smallest subset whose classifier routes these two with a clear margin.
LIMIT = 420


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not default_pool_dir().is_dir():
        pytest.skip("the shared MMLU-Pro pool is not here")
    root = tmp_path_factory.mktemp("embedding-domain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOE_CACHE_DIR", str(root / "cache"))  # a cold cache: nothing embedded before is reused
        result = CliRunner().invoke(app, ["train", "--limit", str(LIMIT), "--out", str(root / "router")])
    assert result.exit_code == 0, result.output
    assert "dev_domain_accuracy" in result.output
    assert (root / "router" / LEXICON_FILE).is_file()  # the default features keep their lexicon in the artifact
    return root / "router"


@pytest.fixture(scope="module")
def experts() -> list[ExpertProfile]:
    return load_expert_profiles()


def expert_declaring(experts: list[ExpertProfile], domain: str) -> str:
    return next(expert.name for expert in experts if domain in expert.domains)


def test_manifest(artifact: Path, experts: list[ExpertProfile]) -> None:
    manifest = json.loads((artifact / "router.json").read_text())
    assert manifest["family"] == "embedding-domain"
    assert manifest["version"] and len(manifest["data_hash"]) == 16
    assert manifest["experts"] == [expert.name for expert in experts]
    assert manifest["metrics"]["n_train"] == LIMIT
    assert 0.3 < manifest["metrics"]["dev_domain_accuracy"] <= 1
    assert 0.3 < manifest["metrics"]["dev_expert_accuracy"] <= 1
    assert manifest["params"]["features"] == "static+lexical"
    assert manifest["params"]["encoder"].startswith("all-MiniLM-L6-v2")
    assert len(manifest["params"]["domains"]) == 14


def test_routes_by_domain(artifact: Path, experts: list[ExpertProfile]) -> None:
    router = load_router(artifact, experts)
    assert isinstance(router, EmbeddingDomainRouter)
    maths = router.decide([{"role": "user", "content": MATHS}])
    history = router.decide([{"role": "system", "content": "Be brief."}, {"role": "user", "content": HISTORY}])
    assert maths.chosen == expert_declaring(experts, "math")
    assert history.chosen == expert_declaring(experts, "history")
    assert maths.version == router.manifest.version and maths.router == "embedding-domain"
    assert [s.score for s in maths.ranked] == sorted((s.score for s in maths.ranked), reverse=True)


def test_batch_scores_match_single_queries(artifact: Path, experts: list[ExpertProfile]) -> None:
    router = load_router(artifact, experts)
    batch = router.score([MATHS, HISTORY])
    assert batch.shape == (2, len(experts))
    np.testing.assert_allclose(batch[1], router.score([HISTORY])[0], atol=1e-5)


def test_saved_router_scores_as_the_fitted_one(tmp_path: Path, experts: list[ExpertProfile]) -> None:
    """The lexicon and classifier survive the artifact: a reloaded router gives the same scores."""
    data = load_dataset()
    train = data.of_split("train")
    train = train.subset(stratified_sample(train.domains, 140))
    texts = train.queries.tolist()
    fitted = EmbeddingDomainRouter(experts).fit(train, data.of_split("dev").subset(np.arange(0)))
    fitted.save(tmp_path)
    assert (tmp_path / LEXICON_FILE).is_file()
    np.testing.assert_allclose(load_router(tmp_path, experts).score(texts[:20]), fitted.score(texts[:20]), atol=1e-6)


def test_contextual_features_route_too(tmp_path: Path, experts: list[ExpertProfile]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
        result = CliRunner().invoke(
            app, ["train", "--limit", str(LIMIT), "--features", "contextual", "--out", str(tmp_path / "router")]
        )
        assert result.exit_code == 0, result.output
        assert list((tmp_path / "cache").glob("embeddings-*.npz"))  # contextual embeddings are cached
        router = load_router(tmp_path / "router", experts)
    assert json.loads((tmp_path / "router" / "router.json").read_text())["params"]["features"] == "contextual"
    assert not (tmp_path / "router" / LEXICON_FILE).exists()
    assert router.decide([{"role": "user", "content": MATHS}]).chosen == expert_declaring(experts, "math")


def test_unknown_feature_kind_is_refused() -> None:
    result = CliRunner().invoke(app, ["train", "--limit", "14", "--features", "bag-of-words", "--out", "/tmp/unused"])
    assert result.exit_code == 2
    assert "unknown feature kind 'bag-of-words'" in result.output


def test_domain_routing_rule() -> None:
    domains = ["math", "law", "poetry"]
    with_other = [ExpertProfile("a", domains=("Math",)), ExpertProfile("b", domains=("math", "other"))]
    np.testing.assert_array_equal(domain_routing(domains, with_other), [[1, 1], [0, 1], [0, 1]])
    without_other = [ExpertProfile("a", domains=("math",)), ExpertProfile("b", domains=("law",))]
    np.testing.assert_array_equal(domain_routing(domains, without_other), [[1, 0], [0, 1], [0.5, 0.5]])


def test_importing_the_router_loads_no_heavy_library() -> None:
    code = "import sys, routers.embedding_domain, training.cli; print(sorted({'torch', 'sklearn', 'sentence_transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
