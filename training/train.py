"""Train a router on the MMLU-Pro pool's train split, score it on dev, write its versioned artifact.

Needs no gateway code: the experts come from the `experts:` list of a config YAML read here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from routers import FAMILIES, ExpertProfile, Router
from training.pool import Pool, load_pool

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "gateway" / "default.yaml"


@dataclass(frozen=True)
class TrainResult:
    router: Router
    directory: Path
    seconds: float


def load_expert_profiles(config: Path = DEFAULT_CONFIG) -> list[ExpertProfile]:
    """The experts a gateway config declares, as the profiles routers are built with."""
    experts = (yaml.safe_load(config.read_text()) or {}).get("experts") or []
    if not experts:
        raise ValueError(f"{config} declares no experts")
    return [
        ExpertProfile(
            name=expert["name"],
            price_per_mtok=float(expert.get("price_per_mtok", 0.0)),
            domains=tuple(expert.get("domains", ())),
            skills=tuple(expert.get("skills", ())),
        )
        for expert in experts
    ]


def stratified_sample(categories: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """`limit` row indices spread evenly over categories (round-robin over shuffled rows per category)."""
    order = np.random.default_rng(seed).permutation(len(categories))
    shuffled = categories[order]
    rank_in_category = np.empty(len(order), dtype=np.int64)
    for category in np.unique(shuffled):
        members = shuffled == category
        rank_in_category[members] = np.arange(members.sum())
    # The first rank of every category, then the second...: any prefix covers the categories evenly.
    return order[np.argsort(rank_in_category, kind="stable")[:limit]]


def _fit_embedding_domain(train: Pool, dev: Pool, experts: list[ExpertProfile]) -> Router:
    from routers.embedding import EmbeddingDomainRouter

    return EmbeddingDomainRouter(experts).fit(
        train.questions.tolist(),
        train.categories.tolist(),
        dev_texts=dev.questions.tolist(),
        dev_domains=dev.categories.tolist(),
    )


# family -> how to fit it on (train, dev, experts); the families a pool-trained router exists for.
TRAINERS: dict[str, Callable[[Pool, Pool, list[ExpertProfile]], Router]] = {
    "embedding-domain": _fit_embedding_domain,
}


def train_router(
    family: str,
    out: Path,
    *,
    config: Path = DEFAULT_CONFIG,
    pool_dir: Path | None = None,
    limit: int | None = None,
) -> TrainResult:
    """Fit `family` on the pool's train split (dev for metrics) and save it to `out`.

    `limit` keeps that many train and that many dev questions, spread over the categories: for quick
    runs and tests.
    """
    if family not in TRAINERS:
        raise ValueError(f"no trainer for family {family!r}; trainable: {sorted(TRAINERS)} (known: {sorted(FAMILIES)})")
    started = time.perf_counter()
    experts = load_expert_profiles(config)
    pool = load_pool(pool_dir)
    train, dev = pool.of_split("train"), pool.of_split("dev")
    if limit is not None:
        train = train.subset(stratified_sample(train.categories, limit))
        dev = dev.subset(stratified_sample(dev.categories, limit))
    router = TRAINERS[family](train, dev, experts)
    router.save(out)
    return TrainResult(router, out, time.perf_counter() - started)
