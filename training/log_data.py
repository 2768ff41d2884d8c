"""Bandit feedback from the decision log as a RoutingDataset, with what off-policy evaluation needs beside it.

Only the chosen expert's reward is known: the other experts' scores are NaN. A decision's cost is known for the
answer that was written; every expert's is estimated from that answer's tokens at the expert's price (the same
formula the gateway prices a call with), assuming another expert would have written about as much.

Rows are split by a hash of the decision id, so a row stays in its split whatever the window: `holdout` of them for
the off-policy estimate, DEV_SHARE of the rest to tune and calibrate the family, the others to train it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from migrations.decision_window import LoggedDecision
from routers.base import Router, query_text
from routers.dataset import RoutingDataset
from routers.manifest import ExpertProfile

DEV_SHARE = 0.2  # of the rows not held out
WEIGHTINGS = ("none", "ips")


@dataclass(frozen=True)
class Dropped:
    """Decisions of the window that cannot be trained on, by reason."""

    no_prompt: int = 0  # prompt storage was off, or the stored prompt is not a list of messages
    unknown_expert: int = 0  # chosen expert not among the configured ones


@dataclass(frozen=True)
class BanditLog:
    ids: tuple[str, ...]
    texts: np.ndarray  # object [n]: what a router reads of each request
    experts: tuple[str, ...]
    action: np.ndarray  # int [n]: the chosen expert's column
    propensity: np.ndarray  # float [n]
    reward: np.ndarray  # float [n]
    costs: np.ndarray  # float [n, m]: USD per expert, estimated as above
    knobs: tuple[str | None, ...]  # each request's cost knob
    split: np.ndarray  # str [n]: train / dev / holdout

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, split: str) -> BanditLog:
        index = np.flatnonzero(self.split == split)
        return replace(
            self, ids=tuple(self.ids[i] for i in index), texts=self.texts[index], action=self.action[index],
            propensity=self.propensity[index], reward=self.reward[index], costs=self.costs[index],
            knobs=tuple(self.knobs[i] for i in index), split=self.split[index],
        )

    def dataset(self, weighting: str = "none") -> RoutingDataset:
        """The train and dev rows, each expert's score NaN but the chosen one's; `weighting` "ips" weighs each
        row by the inverse of its propensity."""
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; one of {', '.join(WEIGHTINGS)}")
        rows = self.split != "holdout"
        scores = np.full((len(self), len(self.experts)), np.nan)
        scores[np.arange(len(self)), self.action] = self.reward
        return RoutingDataset(
            queries=self.texts[rows], experts=self.experts, scores=scores[rows], costs=self.costs[rows],
            tags=((),) * int(rows.sum()), domains=np.full(int(rows.sum()), "", dtype=object), split=self.split[rows],
            weights=np.repeat(1.0 / self.propensity[rows, None], len(self.experts), axis=1) if weighting == "ips"
            else None,
        )

    def fingerprint_rows(self) -> list[dict[str, Any]]:
        """What identifies the data: a rerun on the same rows hashes the same."""
        return [
            {"id": i, "query": t, "expert": self.experts[a], "reward": r, "propensity": p, "knob": k}
            for i, t, a, r, p, k in zip(self.ids, self.texts.tolist(), self.action.tolist(), self.reward.tolist(),
                                        self.propensity.tolist(), self.knobs, strict=True)
        ]


def split_of(decision_id: str, holdout: float) -> str:
    unit = int(hashlib.sha256(decision_id.encode()).hexdigest()[:12], 16) / 16**12
    if unit < holdout:
        return "holdout"
    return "dev" if unit < holdout + DEV_SHARE * (1 - holdout) else "train"


def prompt_text(prompt: str | None) -> str | None:
    """What a router reads of a stored prompt (the request's messages as JSON); None when there is none to read."""
    try:
        messages = json.loads(prompt) if prompt else None
    except json.JSONDecodeError:
        return None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    return query_text(messages)


def bandit_log(
    decisions: Iterable[LoggedDecision], experts: Sequence[ExpertProfile], holdout: float
) -> tuple[BanditLog, Dropped]:
    names = tuple(expert.name for expert in experts)
    column = {name: i for i, name in enumerate(names)}
    prices = np.array([expert.price_per_mtok for expert in experts]) / 1e6
    kept: list[tuple[LoggedDecision, str]] = []
    no_prompt = unknown = 0
    for decision in decisions:
        text = prompt_text(decision.prompt)
        if text is None:
            no_prompt += 1
        elif decision.chosen_expert not in column:
            unknown += 1
        else:
            kept.append((decision, text))
    log = BanditLog(
        ids=tuple(d.id for d, _ in kept),
        texts=np.array([text for _, text in kept], dtype=object),
        experts=names,
        action=np.array([column[d.chosen_expert] for d, _ in kept], dtype=np.int64),
        propensity=np.array([d.propensity for d, _ in kept]),
        reward=np.array([d.reward for d, _ in kept]),
        costs=np.array([(d.tokens or 0) * prices for d, _ in kept]).reshape(len(kept), len(names)),
        knobs=tuple(d.policy for d, _ in kept),
        split=np.array([split_of(d.id, holdout) for d, _ in kept], dtype=object),
    )
    return log, Dropped(no_prompt, unknown)


def with_base(log_data: RoutingDataset, base: RoutingDataset, share: float, seed: int = 0) -> RoutingDataset:
    """`log_data` with fully scored rows of `base` mixed in, so the router does not forget it: per split (train,
    dev), as many base rows as make `share` of the mix (all the split has, at most), drawn at random."""
    if not 0 <= share < 1:
        raise ValueError("the base data's share is at least 0 and below 1")
    base = base.with_experts(log_data.experts)
    rng = np.random.default_rng(seed)
    parts = [log_data]
    for split in ("train", "dev"):
        rows = np.flatnonzero(base.split == split)
        wanted = round(share / (1 - share) * int((log_data.split == split).sum()))
        parts.append(base.subset(np.sort(rng.permutation(rows)[: min(wanted, len(rows))])))
    return concat(parts)


def concat(parts: Sequence[RoutingDataset]) -> RoutingDataset:
    """The parts' rows in order (same experts); scores without weights count 1 when another part has them."""
    weighted = any(part.weights is not None for part in parts)
    return RoutingDataset(
        queries=np.concatenate([part.queries for part in parts]),
        experts=parts[0].experts,
        scores=np.concatenate([part.scores for part in parts]),
        costs=np.concatenate([part.costs for part in parts]),
        tags=tuple(tag for part in parts for tag in part.tags),
        domains=np.concatenate([part.domains for part in parts]),
        split=np.concatenate([part.split for part in parts]),
        weights=np.concatenate([np.ones(p.scores.shape) if p.weights is None else p.weights for p in parts])
        if weighted else None,
        answers=None,  # the log keeps no answers to compare
    )


def with_predicted(data: RoutingDataset, predicted: np.ndarray, weight: float) -> RoutingDataset:
    """`data` with its train rows' unknown scores filled from `predicted` (what the serving router expected of each
    expert, [n, m], NaN where it has no opinion), each counting `weight` of an observed score. Dev keeps only what
    was observed, so a family still tunes and calibrates on real rewards.

    Why: a bandit row reveals one expert's reward, so a head fitted on the known entries alone never sees two experts
    compared on one question, and its ranking can get worse while each expert's calibration improves. The serving
    router's predictions anchor the comparison the log cannot make.
    """
    filled = np.isnan(data.scores) & (data.split == "train")[:, None] & ~np.isnan(predicted)
    if weight == 0 or not filled.any():
        return data
    weights = np.ones(data.scores.shape) if data.weights is None else data.weights.copy()
    weights[filled] = weight
    # Within the observed rewards' range: the family reads scores on that scale.
    within = np.clip(predicted, np.nanmin(data.scores), np.nanmax(data.scores))
    return replace(data, scores=np.where(filled, within, data.scores), weights=weights)


def predictions(router: Router, data: RoutingDataset) -> np.ndarray:
    """`router`'s predicted quality of each of `data`'s experts on the train rows with an unknown score, NaN
    elsewhere and for the experts it does not route to: what `with_predicted` fills in."""
    rows = np.flatnonzero(np.isnan(data.scores).any(axis=1) & (data.split == "train"))
    predicted = np.full(data.scores.shape, np.nan)
    if len(rows):
        scores = router.score(data.queries[rows].tolist())
        column = {expert.name: j for j, expert in enumerate(router.experts)}
        for j, name in enumerate(data.experts):
            if name in column:
                predicted[rows, j] = scores[:, column[name]]
    return predicted
