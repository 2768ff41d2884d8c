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
    hidden: int = 256,
    epochs: int = 40,
    patience: int = 8,
    seed: int = 0,
) -> tuple[list[np.ndarray], float]:
    """Minimise KL(target || softmax(head(x))); keep the epoch whose argmax picks score best on dev."""
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(hidden, target.shape[1]),
    )
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-2)
    inputs, targets, dev_inputs = torch.from_numpy(x), torch.from_numpy(target).float(), torch.from_numpy(dev_x)
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, list[np.ndarray]] = (-np.inf, [])
    since_best = 0
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(128):
            log_probs = torch.log_softmax(head(inputs[batch]), dim=1)
            loss = torch.nn.functional.kl_div(log_probs, targets[batch], reduction="batchmean")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        head.eval()
        with torch.no_grad():
            picks = head(dev_inputs).argmax(dim=1).numpy()
        accuracy = float(dev_rewards[np.arange(len(picks)), picks].mean())
        if accuracy > best[0]:
            best = (
                accuracy,
                [p.detach().numpy().copy() for p in (head[0].weight.T, head[0].bias, head[3].weight.T, head[3].bias)],
            )
            since_best = 0
        elif (since_best := since_best + 1) >= patience:
            break
    return best[1], best[0]


def fit_calibration(log_probs: np.ndarray, unit_rewards: np.ndarray) -> np.ndarray:
    """Slope and intercept of P(reward) = sigmoid(a * log p + b) over every (query, expert) pair.

    Rewards in [0, 1] are soft labels: each pair counts as right with weight r and wrong with 1 - r.
    """
    from sklearn.linear_model import LogisticRegression

    feature = np.tile(log_probs.ravel(), 2)[:, None]
    labels = np.repeat([1, 0], log_probs.size)
    weights = np.concatenate([unit_rewards.ravel(), 1 - unit_rewards.ravel()])
    if weights[labels == 1].sum() == 0 or weights[labels == 0].sum() == 0:  # always or never right
        return np.array([0.0, 20.0 if weights[labels == 0].sum() == 0 else -20.0])
    model = LogisticRegression(C=10.0).fit(feature, labels, sample_weight=weights)
    return np.array([model.coef_[0, 0], model.intercept_[0]])


class RewardDistilledRouter(QualityRouter):
    family = "reward-distilled"

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
        low, high = float(min(train.scores.min(), dev.scores.min())), float(max(train.scores.max(), dev.scores.max()))
        span = (high - low) or 1.0
        unit, dev_unit = (train.scores - low) / span, (dev.scores - low) / span

        best: tuple[float, float, float, list[np.ndarray]] = (-np.inf, 0.0, 1.0, [])
        for beta, temperature in itertools.product(BETAS if any(train.tags) else (0.0,), TEMPERATURES):
            logits = tag_enhanced(unit, train.tags, beta) / temperature
            target = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights, accuracy = fit_head(x, target / target.sum(axis=1, keepdims=True), dev_x, dev.scores)
            if accuracy > best[0]:
                best = (accuracy, beta, temperature, weights)
        _, beta, temperature, weights = best

        uncalibrated = RewardHead(*weights, calibration=np.array([1.0, 0.0]), reward_range=np.array([low, high]))
        dev_log_probs = uncalibrated.log_probs(dev_x)
        self.head = RewardHead(
            *weights, calibration=fit_calibration(dev_log_probs, dev_unit), reward_range=np.array([low, high])
        )
        quality = self.head.quality(dev_x)
        metrics = routing_metrics("dev", quality, dev)
        # Mean predicted minus mean actual reward per expert, on the rows the calibration was fitted to.
        metrics["dev_calibration_gap"] = float(np.abs(quality.mean(axis=0) - dev.scores.mean(axis=0)).max())
        self._fitted(
            name,
            train,
            dev,
            metrics,
            {
                **self.features.params(),
                "head": "mlp-256",
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
