"""reward-distilled (Zooter): distil per-query expert rewards into a small head over frozen query features.

The reward is whatever the dataset scores each expert's answer with (`RoutingDataset.scores`: gold
correctness for the pool, a reward model's or a judge's grade in a user's JSONL), so a new reward
source is a new dataset, not new code. Training target per query: softmax(reward / T) over experts,
after the paper's tag-based label enhancement (the reward vector mixed, with weight beta, with the
mean reward of the queries sharing its tags, which denoises single 0/1 outcomes); loss: KL divergence.
beta and T are tuned on dev.

score(): the head's distribution ranks experts but its values are relative (they sum to 1); the cost
policy needs absolute qualities to trade against price. The reward is therefore calibrated from
the head's log-probability by a one-feature logistic regression fitted on dev (held out from the
head's training, so it sees the head's real error), giving for the pool the probability that the
expert answers right. One calibration serves all experts: it is monotone, so the ranking stays the
head's (per-expert calibrations were tried: they reorder experts and lost 1.5 points of dev accuracy).

Partial scores (bandit feedback from the decision log, `moe router retrain`: only the chosen expert's
reward is known) have no distribution to distil: each logit is then fitted as its expert's log-odds of
reward by binary cross-entropy on the known entries only, optionally weighted per row (inverse
propensity), and the same dev calibration follows on the known (query, expert) pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from routers.features import DEFAULT_KIND, QueryFeatures
from routers.manifest import ExpertProfile, Manifest
from routers.quality import QualityRouter, routing_metrics, smoothed_quality

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

HEAD_FILE = "reward_head.npz"
BETAS = (0.0, 0.5, 0.9)
# Rewards in [0, 1] differ by fractions: a temperature near 1 would make nearly uniform targets.
TEMPERATURES = (0.1, 0.3)
TAG_PRIOR_STRENGTH = 5.0  # queries' worth of the overall mean in each tag's mean reward


@dataclass(frozen=True)
class RewardHead:
    """A one-hidden-layer MLP from query features to expert logits, plus per-expert calibration, as arrays."""

    hidden_w: np.ndarray  # [dim, hidden]
    hidden_b: np.ndarray  # [hidden]
    out_w: np.ndarray  # [hidden, m]
    out_b: np.ndarray  # [m]
    calibration: np.ndarray  # [2]: slope and intercept on the log-probability, shared by the experts
    reward_range: np.ndarray  # [2]: the rewards' min and max, calibration works on [0, 1]

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        logits = np.maximum(features @ self.hidden_w + self.hidden_b, 0.0) @ self.out_w + self.out_b
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def quality(self, features: np.ndarray) -> np.ndarray:
        slope, intercept = self.calibration
        unit = 1.0 / (1.0 + np.exp(-(self.log_probs(features) * slope + intercept)))
        low, high = self.reward_range
        return low + (high - low) * unit

    def save(self, path: Path) -> None:
        np.savez(path, **{name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> RewardHead:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def tag_enhanced(rewards: np.ndarray, tags: Sequence[Sequence[str]], beta: float) -> np.ndarray:
    """(1 - beta) * reward + beta * mean over the query's tags of the tag's mean reward (untagged rows: as is)."""
    if beta == 0 or not any(tags):
        return rewards
    flat = np.array([tag for row in tags for tag in row], dtype=object)
    owners = np.repeat(np.arange(len(tags)), [len(row) for row in tags])
    vocabulary = sorted(set(flat.tolist()))
    table = smoothed_quality(flat, rewards[owners], vocabulary, TAG_PRIOR_STRENGTH)
    row_of = {tag: i for i, tag in enumerate(vocabulary)}
    enhanced = rewards.copy()
    for i, row in enumerate(tags):
        if row:
            enhanced[i] = (1 - beta) * rewards[i] + beta * table[[row_of[t] for t in row]].mean(axis=0)
    return enhanced


def fit_head(
    x: np.ndarray,
    target: np.ndarray,
    dev_x: np.ndarray,
    dev_rewards: np.ndarray,
    *,
    partial: bool = False,
    row_weights: np.ndarray | None = None,
    hidden: int = 256,
    epochs: int = 40,
    patience: int = 8,
    seed: int = 0,
) -> tuple[list[np.ndarray], float]:
    """Fit the head; keep the epoch that does best on dev, and say how well it did.

    A full `target` (a distribution per row): minimise KL(target || softmax(head(x))); on dev, the mean reward
    of the argmax picks. A `partial` one (unit rewards, NaN where unknown: bandit feedback): each logit is the
    log-odds of its expert's reward, binary cross-entropy on the known entries (rows weighed by `row_weights`);
    on dev, minus the same loss on its known entries (`dev_rewards` in [0, 1]): the reward of the picks is known
    only where they agree with the logging policy, which would favour whatever agrees with it.
    """
    import torch
    from torch.nn import functional

    torch.manual_seed(seed)
    head = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(hidden, target.shape[1]),
    )
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-2)
    known, dev_known = torch.from_numpy(~np.isnan(target)), torch.from_numpy(~np.isnan(dev_rewards))
    weights = torch.ones(len(x)) if row_weights is None else torch.from_numpy(row_weights / row_weights.mean()).float()
    inputs, targets = torch.from_numpy(x), torch.from_numpy(np.nan_to_num(target)).float()
    dev_inputs, dev_targets = torch.from_numpy(dev_x), torch.from_numpy(np.nan_to_num(dev_rewards)).float()

    def masked_loss(logits: torch.Tensor, wanted: torch.Tensor, seen: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        loss = functional.binary_cross_entropy_with_logits(logits, wanted, reduction="none") * seen * weight[:, None]
        return loss.sum() / seen.sum().clamp(min=1)

    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, list[np.ndarray]] = (-np.inf, [])
    since_best = 0
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            logits = head(inputs[batch])
            if partial:
                loss = masked_loss(logits, targets[batch], known[batch], weights[batch])
            else:
                loss = functional.kl_div(torch.log_softmax(logits, dim=1), targets[batch], reduction="batchmean")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        head.eval()
        with torch.no_grad():
            dev_logits = head(dev_inputs)
            if partial:
                score = -float(masked_loss(dev_logits, dev_targets, dev_known, torch.ones(len(dev_x))))
            else:
                picks = dev_logits.argmax(dim=1).numpy()
                score = float(dev_rewards[np.arange(len(picks)), picks].mean())
        if score > best[0]:
            best = (
                score,
                [p.detach().numpy().copy() for p in (head[0].weight.T, head[0].bias, head[3].weight.T, head[3].bias)],
            )
            since_best = 0
        elif (since_best := since_best + 1) >= patience:
            break
    return best[1], best[0]


def distil(
    x: np.ndarray, unit: np.ndarray, tags: Sequence[Sequence[str]], dev_x: np.ndarray, dev_rewards: np.ndarray
) -> tuple[float, float, list[np.ndarray]]:
    """The head distilled from softmax(tag-enhanced reward / T), beta and T chosen by its dev accuracy."""
    best: tuple[float, float, float, list[np.ndarray]] = (-np.inf, 0.0, 1.0, [])
    for beta, temperature in itertools.product(BETAS if any(tags) else (0.0,), TEMPERATURES):
        logits = tag_enhanced(unit, tags, beta) / temperature
        target = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights, accuracy = fit_head(x, target / target.sum(axis=1, keepdims=True), dev_x, dev_rewards)
        if accuracy > best[0]:
            best = (accuracy, beta, temperature, weights)
    return best[1], best[2], best[3]


def fit_calibration(log_probs: np.ndarray, unit_rewards: np.ndarray) -> np.ndarray:
    """Slope and intercept of P(reward) = sigmoid(a * log p + b) over every (query, expert) pair with a known reward.

    Rewards in [0, 1] are soft labels: each pair counts as right with weight r and wrong with 1 - r.
    """
    from sklearn.linear_model import LogisticRegression

    known = ~np.isnan(unit_rewards)  # partial scores: the pairs whose reward is known
    feature = np.tile(log_probs[known], 2)[:, None]
    labels = np.repeat([1, 0], known.sum())
    weights = np.concatenate([unit_rewards[known], 1 - unit_rewards[known]])
    if weights[labels == 1].sum() == 0 or weights[labels == 0].sum() == 0:  # always or never right
        return np.array([0.0, 20.0 if weights[labels == 0].sum() == 0 else -20.0])
    model = LogisticRegression(C=10.0).fit(feature, labels, sample_weight=weights)
    return np.array([model.coef_[0, 0], model.intercept_[0]])


class RewardDistilledRouter(QualityRouter):
    family = "reward-distilled"
    learns_from_partial_scores = True

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        head: RewardHead | None = None,
        features: QueryFeatures | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self.head = head
        self.features = features

    def fit(
        self, train: RoutingDataset, dev: RoutingDataset, *, features: str = DEFAULT_KIND, name: str = "reward-distilled"
    ) -> Self:
        self.features = QueryFeatures.fit(features, train.queries.tolist())
        x = self.features.of_training(train.queries.tolist())
        dev_x = self.features.of_training(dev.queries.tolist())
        both = np.concatenate([train.scores, dev.scores])
        low, high = float(np.nanmin(both)), float(np.nanmax(both))
        span = (high - low) or 1.0
        unit, dev_unit = (train.scores - low) / span, (dev.scores - low) / span

        if np.isnan(both).any():  # bandit feedback: each expert's log-odds learnt where its reward is known
            beta, temperature = None, None
            weights, _ = fit_head(x, unit, dev_x, dev_unit, partial=True, row_weights=train.weights)
        else:
            beta, temperature, weights = distil(x, unit, train.tags, dev_x, dev.scores)

        uncalibrated = RewardHead(*weights, calibration=np.array([1.0, 0.0]), reward_range=np.array([low, high]))
        dev_log_probs = uncalibrated.log_probs(dev_x)
        self.head = RewardHead(
            *weights, calibration=fit_calibration(dev_log_probs, dev_unit), reward_range=np.array([low, high])
        )
        quality = self.head.quality(dev_x)
        metrics = routing_metrics("dev", quality, dev)
        # Mean predicted minus mean actual reward per expert, on the rows (and entries) the calibration was fitted to.
        known = ~np.isnan(dev.scores)
        gaps = [abs(q[seen].mean() - r[seen].mean()) for q, r, seen in zip(quality.T, dev.scores.T, known.T, strict=True)
                if seen.any()]
        metrics["dev_calibration_gap"] = float(max(gaps))
        self._fitted(
            name,
            train,
            dev,
            metrics,
            {
                **self.features.params(),
                "head": "mlp-256",
                "objective": "kl-to-softmax" if beta is not None else "masked-log-loss",
                "beta": beta,
                "temperature": temperature,
                "quality_calibration": "platt-on-dev",
            },
        )
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.head is None or self.features is None:
            raise RuntimeError("the router is not fitted")
        return self.head.quality(self.features(texts))

    def _save(self, directory: Path) -> None:
        assert self.head is not None and self.features is not None
        self.head.save(directory / HEAD_FILE)
        self.features.save(directory)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        features = QueryFeatures.load(directory, manifest.params)
        return cls(experts, manifest, RewardHead.load(directory / HEAD_FILE), features)
