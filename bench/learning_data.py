"""The learning benchmark's questions: which pool questions start the router, which are sent through the gateway,
which tune every offline-trained router, and the routing JSONL `moe router train --data` reads for them.

The JSONL rows carry the query (the pool's prompt: stem and lettered options, exactly what the client sends), every
expert's recorded correctness and cost, and the split, and no tags or domain: the decision log knows only the text,
so the routers trained with full information read what the retrained ones read and differ from them only in how
much of the rewards they see.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.pool import Pool
from training.train import stratified_sample


@dataclass(frozen=True)
class Plan:
    """Row indices into the pool."""

    start: np.ndarray  # train questions the starting router is trained on (full information)
    stream: np.ndarray  # other train questions, in the order the client sends them
    dev: np.ndarray  # dev questions every router trained here tunes and calibrates on (full information)

    def to_json(self) -> dict[str, int]:
        return {"start_questions": len(self.start), "streamed_questions": len(self.stream),
                "dev_questions": len(self.dev)}


def plan(pool: Pool, start: int, stream: int, dev: int | None = None, seed: int = 0) -> Plan:
    """`start` train questions spread over the categories, `stream` others of the train split in a seeded random
    order (so any prefix is a random sample), `dev` dev questions spread over the categories (None: all)."""
    train_rows = np.flatnonzero(pool.mask("train"))
    dev_rows = np.flatnonzero(pool.mask("dev"))
    start_rows = train_rows[stratified_sample(pool.categories[train_rows], start, seed)]
    others = np.setdiff1d(train_rows, start_rows)
    if stream > len(others):
        raise SystemExit(f"the train split has {len(others)} questions besides the {start} that start: "
                         f"{stream} cannot be streamed")
    stream_rows = np.random.default_rng(seed).permutation(others)[:stream]
    if dev is not None:
        dev_rows = dev_rows[stratified_sample(pool.categories[dev_rows], dev, seed)]
    return Plan(start_rows, stream_rows, dev_rows)


def write_jsonl(path: Path, pool: Pool, parts: Sequence[tuple[np.ndarray, str]]) -> Path:
    """The pool rows of each (rows, split) part as routing JSONL (training/dataset.py's format)."""
    with path.open("w") as out:
        for rows, split in parts:
            for row in rows.tolist():
                out.write(json.dumps({
                    "query": str(pool.prompts[row]),
                    "scores": {m: float(pool.correct[row, j]) for j, m in enumerate(pool.models)},
                    "costs": {m: float(pool.cost[row, j]) for j, m in enumerate(pool.models)},
                    "split": split,
                }) + "\n")
    return path


class Rewards:
    """The feedback the simulator gives: the pool's recorded correctness of the expert that answered."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.column = {name: j for j, name in enumerate(pool.models)}

    def __call__(self, row: int, expert: str) -> float:
        return float(self.pool.correct[row, self.column[expert]])
