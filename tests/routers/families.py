"""The trained router families shared by a test session: trained once, used by tests/routers/test_routers_trained.py
and by the gateway's live test of them (tests/gateway/test_router_families.py).

A pytest plugin (tests/conftest.py names it): its fixtures train routers on demand and start no server.
Each test that asks for them runs with MOE_CACHE_DIR at a cache of this session's own (encoder graph,
embeddings), set only while it runs, so nothing else in the session sees that cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILIES = ("bert-domain", "reward-distilled", "skill-based", "ensemble")
SMALL = ["Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "Phi-3-mini-4k-instruct"]
# Phi-3 trails both others on the pool's maths questions, whichever of those two a subset favours.
STRONG_AT_MATHS = {"Meta-Llama-3_1-8B-Instruct", "mathstral-7B"}
MATHS = "Solve for x: 3x^2 - 12x + 9 = 0. What is the sum of the roots of the equation?"
HISTORY = "Which treaty ended the Thirty Years' War in 1648, and which empires signed it?"
# Train and dev questions each, spread over the 14 categories; fine-tuning MiniLM costs the most.
LIMIT = {"bert-domain": 140, "reward-distilled": 420, "skill-based": 420, "ensemble": 420}


class Artifacts:
    """Trains a family the first time a test asks for it, so `-k family` trains that family only."""

    def __init__(self, root: Path, *, limits: dict[str, int] | None = None, **train_options: object) -> None:
        self.root = root
        self.limits = limits or {}
        self.train_options = train_options
        self.trained: set[str] = set()

    def __getitem__(self, family: str) -> Path:
        from training.train import train_router

        if family not in self.trained:
            train_router(family, self.root / family, limit=self.limits.get(family), **self.train_options)
            self.trained.add(family)
        return self.root / family


@pytest.fixture(scope="session")
def _router_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def router_cache(_router_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's own router cache, in MOE_CACHE_DIR while the test runs (HF_HUB_OFFLINE too)."""
    monkeypatch.setenv("MOE_CACHE_DIR", str(_router_cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _router_cache_dir


@pytest.fixture(scope="session")
def _pool_routers(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    from training.pool import default_pool_dir

    if not default_pool_dir().is_dir():
        pytest.skip("the shared MMLU-Pro pool is not here")
    return Artifacts(tmp_path_factory.mktemp("pool-routers"), limits=LIMIT, experts=SMALL)


@pytest.fixture
def pool_artifacts(router_cache: Path, _pool_routers: Artifacts) -> Artifacts:
    """The families trained on small subsets of the pool for the SMALL experts, once a session."""
    return _pool_routers
