"""The reward-distilled router's head: a one-hidden-layer MLP from query features to one output per expert,
how it is trained, and how its outputs are read as calibrated qualities (routers/reward_distilled.py).

Two objectives, two readings of the outputs:
- `kl` (Zooter's distillation): the outputs are logits of a distribution over experts, fitted to
  softmax(reward / T) by KL divergence; read as log-probabilities (`softmax`), relative by construction.
- `bce`: each output is its expert's log-odds of reward, fitted by binary cross-entropy per expert on the
  entries whose reward is known (all of them, or the chosen expert's only with bandit feedback); read as
  is (`sigmoid`), an absolute quality per expert.
Either reading goes through one calibration fitted on dev, P(reward) = sigmoid(a * output + b): monotone
and shared by the experts, so it keeps the head's ranking and only corrects its confidence.

The features are mostly a TF-IDF lexicon (up to 10,000 words, a few dozen set per query): a training step
multiplies and updates only the first layer's rows for the words its batch uses (`LazyAdamW`), and scoring
only those a query uses. An epoch over the pool's 7,213 training questions took 5-6 s on one busy core,
against 12-18 s with the dense product and AdamW updating every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from routers.quality import smoothed_quality

if TYPE_CHECKING:
    import torch

OBJECTIVES = {"kl": "softmax", "bce": "sigmoid"}  # objective -> how its outputs are read
TAG_PRIOR_STRENGTH = 5.0  # queries' worth of the overall mean in each tag's mean reward
BATCH = 128
LEARNING_RATE = 2e-3
DROPOUT = 0.2


@dataclass(frozen=True)
class RewardHead:
    """The fitted MLP and its calibration, as arrays."""

    hidden_w: np.ndarray  # [dim, hidden]
    hidden_b: np.ndarray  # [hidden]
    out_w: np.ndarray  # [hidden, m]
    out_b: np.ndarray  # [m]
    calibration: np.ndarray  # [2]: slope and intercept on the outputs, shared by the experts
    reward_range: np.ndarray  # [2]: the rewards' min and max, calibration works on [0, 1]
    # `softmax` or `sigmoid` (see OBJECTIVES). Artifacts written before per-expert heads hold none: distilled ones.
    reading: str = "softmax"

    def outputs(self, features: np.ndarray) -> np.ndarray:
        used = np.flatnonzero(features.any(axis=0))
        if 2 * len(used) < features.shape[1]:
            product = features[:, used] @ self.hidden_w[used]  # a query sets a few dozen of the lexicon's words
        else:  # dense features (static alone, a large batch): gathering the rows would only copy them
            product = features @ self.hidden_w
        hidden = np.maximum(product + self.hidden_b, 0.0)
        logits = hidden @ self.out_w + self.out_b
        if self.reading == "sigmoid":
            return logits
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def quality(self, features: np.ndarray) -> np.ndarray:
        slope, intercept = self.calibration
        unit = 1.0 / (1.0 + np.exp(-(self.outputs(features) * slope + intercept)))
        low, high = self.reward_range
        return low + (high - low) * unit

    def calibrated(self, dev_x: np.ndarray, dev_unit: np.ndarray) -> RewardHead:
        """This head with its calibration fitted on dev (`dev_unit`: rewards in [0, 1], NaN where unknown)."""
        return replace(self, calibration=fit_calibration(self.outputs(dev_x), dev_unit))

    def save(self, path: Path) -> None:
        np.savez(path, **{name: np.asarray(getattr(self, name)) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> RewardHead:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{**arrays, **({"reading": str(arrays["reading"])} if "reading" in arrays else {})})


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
    objective: str,
    weights: np.ndarray | None = None,
    hidden: int = 256,
    weight_decay: float = 1e-2,
    epochs: int = 40,
    patience: int = 6,
    seed: int = 0,
) -> RewardHead:
    """Fit the head (uncalibrated, on unit rewards); keep the epoch that does best on dev.

    `kl`: `target` is a distribution per row; on dev, the mean reward of the argmax picks. `bce`: `target` holds
    unit rewards, NaN where unknown, each known one weighed by `weights` ([n, m]); on dev, minus the same loss on
    its known entries (`dev_rewards` in [0, 1]): with bandit feedback the reward of the picks is known only where
    they agree with the logging policy, which would favour whatever agrees with it.
    """
    import torch
    from torch.nn import functional

    torch.manual_seed(seed)
    first = torch.empty(hidden, x.shape[1])
    torch.nn.init.kaiming_uniform_(first, a=5**0.5)  # torch.nn.Linear's initialisation
    first_layer = LazyAdamW(first.T.contiguous(), weight_decay)
    rest = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(DROPOUT), torch.nn.Linear(hidden, target.shape[1]))
    first_b = torch.nn.Parameter(torch.zeros(hidden))
    optimiser = torch.optim.AdamW([first_b, *rest.parameters()], lr=LEARNING_RATE, weight_decay=weight_decay)
    known, dev_known = torch.from_numpy(~np.isnan(target)), torch.from_numpy(~np.isnan(dev_rewards))
    if weights is None:
        weights = np.ones(target.shape)
    weight = torch.from_numpy(weights / weights[~np.isnan(target)].mean()).float()
    targets = torch.from_numpy(np.nan_to_num(target)).float()
    dev_targets = torch.from_numpy(np.nan_to_num(dev_rewards)).float()
    dev_inputs = torch.from_numpy(dev_x).to_sparse()  # scored every epoch: a sparse product is far cheaper

    def masked_loss(
        logits: torch.Tensor, wanted: torch.Tensor, seen: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        loss = functional.binary_cross_entropy_with_logits(logits, wanted, reduction="none") * seen * weight
        return loss.sum() / seen.sum().clamp(min=1)

    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, list[np.ndarray]] = (-np.inf, [])
    since_best = 0
    for _ in range(epochs):
        rest.train()
        for batch in torch.randperm(len(x), generator=generator).split(BATCH):
            inputs = x[batch.numpy()]
            used = torch.from_numpy(np.flatnonzero(inputs.any(axis=0)))
            rows = first_layer.weight[used].requires_grad_()
            logits = rest(torch.from_numpy(inputs[:, used.numpy()]) @ rows + first_b)
            if objective == "bce":
                loss = masked_loss(logits, targets[batch], known[batch], weight[batch])
            else:
                loss = functional.kl_div(torch.log_softmax(logits, dim=1), targets[batch], reduction="batchmean")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            first_layer.step(used, rows.grad)
        rest.eval()
        with torch.no_grad():
            dev_logits = rest(dev_inputs @ first_layer.weight + first_b)
            if objective == "bce":
                score = -float(masked_loss(dev_logits, dev_targets, dev_known, torch.ones(dev_known.shape)))
            else:
                picks = dev_logits.argmax(dim=1).numpy()
                score = float(dev_rewards[np.arange(len(picks)), picks].mean())
        if score > best[0]:
            arrays = (first_layer.weight, first_b, rest[2].weight.T, rest[2].bias)
            best = (score, [p.detach().numpy().copy() for p in arrays])
            since_best = 0
        elif (since_best := since_best + 1) >= patience:
            break
    return RewardHead(
        *best[1], calibration=np.array([1.0, 0.0]), reward_range=np.array([0.0, 1.0]), reading=OBJECTIVES[objective]
    )


class LazyAdamW:
    """AdamW for the first layer's weights [dim, hidden] that updates only the rows (input features) a batch used:
    a batch sets a few thousand of the lexicon's 10,000 words, and the full update was most of a step's time. An
    unused row keeps its moments and is not decayed (as in lazy Adam for embeddings)."""

    def __init__(self, weight: torch.Tensor, weight_decay: float) -> None:
        import torch

        self.weight, self.weight_decay = weight, weight_decay
        self.mean, self.square = torch.zeros_like(weight), torch.zeros_like(weight)
        self.steps = 0

    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = 0.9, 0.999  # torch's defaults, as the rest of the head uses
        self.steps += 1
        mean = self.mean[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
        square = self.square[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.mean[rows], self.square[rows] = mean, square
        step = (mean / (1 - beta1**self.steps)) / ((square / (1 - beta2**self.steps)).sqrt_().add_(1e-8))
        weight = self.weight[rows]
        self.weight[rows] = weight - LEARNING_RATE * (step + self.weight_decay * weight)


def fit_calibration(outputs: np.ndarray, unit_rewards: np.ndarray) -> np.ndarray:
    """Slope and intercept of P(reward) = sigmoid(a * output + b) over every (query, expert) pair with a known reward.

    Rewards in [0, 1] are soft labels: each pair counts as right with weight r and wrong with 1 - r.
    """
    from sklearn.linear_model import LogisticRegression

    known = ~np.isnan(unit_rewards)  # partial scores: the pairs whose reward is known
    feature = np.tile(outputs[known], 2)[:, None]
    labels = np.repeat([1, 0], known.sum())
    weights = np.concatenate([unit_rewards[known], 1 - unit_rewards[known]])
    if weights[labels == 1].sum() == 0 or weights[labels == 0].sum() == 0:  # always or never right
        return np.array([0.0, 20.0 if weights[labels == 0].sum() == 0 else -20.0])
    model = LogisticRegression(C=10.0).fit(feature, labels, sample_weight=weights)
    return np.array([model.coef_[0, 0], model.intercept_[0]])
