"""Loads routing data into the RoutingDataset every router trains on (routers/dataset.py): the MMLU-Pro pool,
or a user's own JSONL, so other experts and other data need no code change:

    {"query": "...", "scores": {"expert-a": 1.0, "expert-b": 0.0}, "costs": {...}?, "tags": [...]?,
     "domain": "..."?, "answers": {"expert-a": "42", ...}?, "split": "train|dev|test"?}

Rows without `split` are assigned train/dev/test 60/20/20 by a hash of the query (stable across runs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from routers.dataset import RoutingDataset
from training.pool import Pool, load_pool


def from_pool(pool: Pool | None = None) -> RoutingDataset:
    pool = pool or load_pool()
    return RoutingDataset(
        queries=pool.prompts,
        experts=pool.models,
        scores=pool.correct.astype(np.float64),
        costs=np.asarray(pool.cost, dtype=np.float64),
        tags=tuple((str(c), str(s)) for c, s in zip(pool.categories, pool.src, strict=True)),
        domains=np.asarray(pool.categories, dtype=object),
        split=np.asarray(pool.split),
        answers=np.where(pool.pred == "", None, pool.pred.astype(object)),
    )


def from_jsonl(path: Path) -> RoutingDataset:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no rows")
    experts: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row.get("query"), str) or not isinstance(row.get("scores"), dict) or not row["scores"]:
            raise ValueError(f"{path}:{i + 1}: each row needs a string `query` and a non-empty `scores` object")
        experts.extend(name for name in row["scores"] if name not in experts)
    scores = np.full((len(rows), len(experts)), np.nan)
    costs = np.zeros((len(rows), len(experts)))
    answers = np.full((len(rows), len(experts)), None, dtype=object)
    for i, row in enumerate(rows):
        for name, value in row["scores"].items():
            scores[i, experts.index(name)] = float(value)
        for name, value in (row.get("costs") or {}).items():
            if name in experts:
                costs[i, experts.index(name)] = float(value)
        for name, value in (row.get("answers") or {}).items():
            if name in experts and value is not None:
                answers[i, experts.index(name)] = str(value)
    if np.isnan(scores).any():
        i = int(np.argwhere(np.isnan(scores))[0][0])
        raise ValueError(f"{path}:{i + 1}: every row must score every expert ({experts})")
    return RoutingDataset(
        queries=np.array([r["query"] for r in rows], dtype=object),
        experts=tuple(experts),
        scores=scores,
        costs=costs,
        tags=tuple(tuple(str(t) for t in r.get("tags") or ()) for r in rows),
        domains=np.array([str(r.get("domain", "")) for r in rows], dtype=object),
        split=np.array([r.get("split") or _hash_split(r["query"]) for r in rows]),
        answers=answers if any(row.get("answers") for row in rows) else None,
    )


def _hash_split(query: str) -> str:
    bucket = int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 6 else "dev" if bucket < 8 else "test"


def load_dataset(source: str | Path | None = None) -> RoutingDataset:
    """`None` or a pool directory: the MMLU-Pro pool; a `.jsonl` file: the user's own data."""
    if source is not None and str(source).endswith(".jsonl"):
        return from_jsonl(Path(source))
    return from_pool(load_pool(source))
