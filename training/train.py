"""Train a router on a RoutingDataset's train split (the MMLU-Pro pool by default), tune and score it
on dev, replay it on test for its cost-quality frontier, write its versioned artifact.

Needs no gateway code: one `Router.fit(train, dev, **params)` for every family. embedding-domain routes
between the `experts:` of a config YAML read here, the other families between the experts the dataset scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from routers import ExpertProfile, Router, router_class
from routers.dataset import RoutingDataset
from routers.quality import profiles_of
from training.dataset import load_dataset
from training.evaluate import router_frontier

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


def train_router(
    family: str,
    out: Path,
    *,
    config: Path = DEFAULT_CONFIG,
    pool_dir: Path | None = None,
    limit: int | None = None,
    dataset: RoutingDataset | Path | str | None = None,
    experts: Sequence[str] | None = None,
    features: str | None = None,
) -> TrainResult:
    """Fit `family` on a dataset's train split (dev for tuning and metrics) and save it to `out`.

    `dataset`: a RoutingDataset, a `.jsonl` file or a pool directory (default: the pool at
    `pool_dir`); `experts` keeps only those experts' columns (e.g. the small-experts scenario).
    `limit` keeps that many train and that many dev questions, spread over the domains: for quick
    runs and tests. `features`: what the router reads of a query (`routers.features.KINDS`); None leaves it to
    the family (the dataset-trained families choose it on dev).
    """
    cls = router_class(family)
    started = time.perf_counter()
    data = dataset if isinstance(dataset, RoutingDataset) else load_dataset(dataset or pool_dir)
    if experts is not None:
        data = data.with_experts(experts)
    train, dev = data.of_split("train"), data.of_split("dev")
    if limit is not None:
        train = train.subset(stratified_sample(train.domains, limit))
        dev = dev.subset(stratified_sample(dev.domains, limit))
    profiles = load_expert_profiles(config) if cls.experts_from_config else profiles_of(train)
    router = cls(profiles).fit(train, dev, **({"features": features} if features else {}))
    assert router.manifest is not None
    router.manifest.params.update(cost_quality(router, data, train, dev, limit))
    router.save(out)
    return TrainResult(router, out, time.perf_counter() - started)


def cost_quality(
    router: Router, data: RoutingDataset, train: RoutingDataset, dev: RoutingDataset, limit: int | None
) -> dict[str, Any]:
    """The router's cost-quality frontier replayed on the data's test split (`limit` questions of it, like the
    other splits), or on dev when the data has none: what the dashboard plots for the version."""
    if not (data.split == "test").any():
        return router_frontier(router, dev, train, "dev")
    test = data.of_split("test")
    if limit is not None:
        test = test.subset(stratified_sample(test.domains, limit))
    return router_frontier(router, test, train, "test")
