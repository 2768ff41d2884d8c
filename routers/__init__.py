"""Router families, looked up by the `family` written in an artifact's router.json.

Families are imported only when an artifact of theirs is loaded, so the gateway pays the import
cost (torch, sentence-transformers) of the routers it actually uses and no other.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from routers.base import Decision, ExpertScore, Router
from routers.manifest import ExpertProfile, Manifest

if TYPE_CHECKING:
    from threadpoolctl import threadpool_limits

# family -> "module:Class"
FAMILIES: dict[str, str] = {
    "embedding-domain": "routers.embedding_domain:EmbeddingDomainRouter",
    "bert-domain": "routers.bert_domain:BertDomainRouter",
    "reward-distilled": "routers.reward_distilled:RewardDistilledRouter",
    "skill-based": "routers.skill_based:SkillBasedRouter",
    "ensemble": "routers.ensemble:EnsembleRouter",
}


def one_blas_thread() -> threadpool_limits:
    """BLAS (numpy's matrix products) limited to one thread, the way the gateway routes: in force at once, undone
    on leaving it when used as a context manager. Routing multiplies one query's features by small matrices, where
    BLAS's worker threads only add hand-offs, and on a busy machine each waits for a core (skill-based on MMLU-Pro,
    57 skills over 10,384 features, beside other work on 2 cores: p50 3.7-5.5 ms with numpy's two threads,
    1.4-1.7 ms with one)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def router_class(family: str) -> type[Router]:
    try:
        target = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown router family {family!r}; known: {sorted(FAMILIES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def load_router(directory: Path, experts: Sequence[ExpertProfile]) -> Router:
    """Load any trained router artifact, ready to route; the family comes from its manifest."""
    manifest = Manifest.read(directory)
    router = router_class(manifest.family).load(directory, experts)
    router.score([""])  # load its encoder or classifier now, not on the first request
    return router


__all__ = [
    "FAMILIES", "Decision", "ExpertProfile", "ExpertScore", "Manifest", "Router", "load_router", "one_blas_thread",
    "router_class",
]
