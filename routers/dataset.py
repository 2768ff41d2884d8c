"""The one shape every router trains and is evaluated on, whatever the data's origin.

A `RoutingDataset` holds, per query, a score for each expert's answer (the reward: correctness,
a reward model's or a judge's grade, user feedback), each answer's cost, tags (subjects, skills)
an optional domain label and, where recorded, each expert's final answer. training/dataset.py loads the MMLU-Pro pool and a user's own JSONL
into it, so other experts and other data need no code change.

Bandit feedback from the decision log (training/log_data.py) knows only the chosen expert's reward:
the other scores are NaN, or filled with the serving router's predictions, and `weights` may say how much
each known score counts (e.g. the inverse of the probability that the logging policy chose that expert, or
less than one observed for a predicted score). Only the families whose `learns_from_partial_scores` is set
train on such data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from routers.cost import CostModel

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class RoutingDataset:
    queries: np.ndarray  # str [n]
    experts: tuple[str, ...]  # [m]
    scores: np.ndarray  # float [n, m]: quality of each expert's answer, higher is better
    costs: np.ndarray  # float [n, m]: USD that answer cost (zeros when unknown)
    tags: tuple[tuple[str, ...], ...]  # [n]: e.g. (category, src subject)
    domains: np.ndarray  # str [n]: label for domain routers ("" when unknown)
    split: np.ndarray  # str [n]: train / dev / test
    weights: np.ndarray | None = None  # float [n, m]: how much each known score counts; None: all alike
    # object [n, m]: each expert's final answer as written (str, None where none was read), what an agreement
    # cascade compares; None when the data records no answers.
    answers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: np.ndarray) -> RoutingDataset:
        index = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        return replace(
            self,
            queries=self.queries[index],
            scores=self.scores[index],
            costs=self.costs[index],
            tags=tuple(self.tags[i] for i in index),
            domains=self.domains[index],
            split=self.split[index],
            weights=None if self.weights is None else self.weights[index],
            answers=None if self.answers is None else self.answers[index],
        )

    def of_split(self, split: str) -> RoutingDataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
        return self.subset(self.split == split)

    def with_experts(self, names: Sequence[str]) -> RoutingDataset:
        """Only these experts' columns, in this order (e.g. the small-experts scenario)."""
        missing = [n for n in names if n not in self.experts]
        if missing:
            raise ValueError(f"unknown experts {missing}; known: {list(self.experts)}")
        cols = [self.experts.index(n) for n in names]
        return replace(
            self,
            experts=tuple(names),
            scores=self.scores[:, cols],
            costs=self.costs[:, cols],
            weights=None if self.weights is None else self.weights[:, cols],
            answers=None if self.answers is None else self.answers[:, cols],
        )

    @cached_property
    def cost_model(self) -> CostModel | None:
        """Each expert's cost per query predicted from its words (routers/cost.py), fitted on these rows once: a
        family's search and its last step, and an ensemble's members, trained on one dataset read the same one
        (a fit takes about 10 s on the MMLU-Pro pool's train split)."""
        from routers.cost import CostModel

        return CostModel.fit(self.queries.tolist(), self.costs)

    def mean_cost(self) -> np.ndarray:
        """Per expert, the average cost of one answer: what cost-aware policies expect to pay."""
        return self.costs.mean(axis=0)
