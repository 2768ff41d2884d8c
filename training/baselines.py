"""Reference routers every trained router is compared with, in the evaluation's own harness.

Each baseline fits on a train split and, like a router, predicts a quality per expert (`score_dataset`)
that the cost policy turns into a choice; `fixed_lambda` pins the policy for baselines that are one
point rather than a cost-quality curve. The two embedding baselines also `decide_one` query at a time,
so their routing latency is measured the way a router's is.

- random: a uniformly random expert per query.
- single:<expert>: always that expert.
- oracle: the cheapest expert whose answer scored best (it reads the answers' true scores).
- true-label: per query, the experts' mean train + dev score on the query's true domain label
  (routing by the category a perfect classifier would give; a curve, since the policy weighs cost).
- logistic: the pool README's plain baseline: all-MiniLM-L6-v2 question embeddings, one logistic
  regression per expert predicting its score (correct or not), argmax p - lam * cost.
- knn: RouterBench-style: the mean score of each expert over the k nearest train queries (cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np

from routers.dataset import RoutingDataset
from routers.discovery import neighbourhood_scores
from routers.policy import CostPolicy

# Small enough that an answer's cost only breaks ties between equally scored answers.
TIE_BREAK = 1e-6
BASELINES = ("random", "single", "oracle", "true-label", "logistic", "knn")


class Baseline:
    name: str
    kind: ClassVar[str] = "baseline"
    fixed_lambda: ClassVar[float | None] = None  # None: swept into a cost-quality curve

    def __init__(self, experts: Sequence[str]) -> None:
        self.experts = tuple(experts)
        self.train_cost = np.zeros(len(self.experts))

    def fit(self, train: RoutingDataset) -> Self:
        self.train_cost = train.mean_cost()
        return self

    def expected_cost(self, data: RoutingDataset | None = None) -> np.ndarray:
        """USD per query per expert, as the policy sees it: the train split's mean cost, whatever the query."""
        return self.train_cost

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        raise NotImplementedError


class RandomChoice(Baseline):
    fixed_lambda = 0.0

    def __init__(self, experts: Sequence[str], seed: int = 0) -> None:
        super().__init__(experts)
        self.name = "random"
        self.seed = seed

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return np.random.default_rng(self.seed).random((len(data), len(self.experts)))


class SingleExpert(Baseline):
    fixed_lambda = 0.0

    def __init__(self, experts: Sequence[str], expert: str) -> None:
        super().__init__(experts)
        self.name = f"single:{expert}"
        self.column = self.experts.index(expert)

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        scores = np.zeros((len(data), len(self.experts)))
        scores[:, self.column] = 1.0
        return scores


class Oracle(Baseline):
    kind = "reference"
    fixed_lambda = 0.0

    def __init__(self, experts: Sequence[str]) -> None:
        super().__init__(experts)
        self.name = "oracle"

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        # The true scores, ties broken by each answer's actual cost: the cheapest of the best answers.
        return data.scores - TIE_BREAK * data.costs


class TrueLabel(Baseline):
    kind = "reference"

    def __init__(self, experts: Sequence[str]) -> None:
        super().__init__(experts)
        self.name = "true-label"
        self.by_domain: dict[str, np.ndarray] = {}
        self.overall = np.zeros(len(self.experts))

    def fit(self, train: RoutingDataset) -> Self:
        super().fit(train)
        self.overall = train.scores.mean(axis=0)
        self.by_domain = {d: train.scores[train.domains == d].mean(axis=0) for d in np.unique(train.domains)}
        return self

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return np.stack([self.by_domain.get(d, self.overall) for d in data.domains])


class EmbeddingBaseline(Baseline):
    """Shared by the embedding baselines: cached embeddings in bulk, a fresh one per query when timed."""

    def fit(self, train: RoutingDataset) -> Self:
        from routers import encoder

        super().fit(train)
        self._fit(encoder.cached_embeddings(list(train.queries), progress=False), train.scores)
        return self

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        from routers import encoder

        return self._score(encoder.cached_embeddings(list(data.queries), progress=False))

    def decide_one(self, text: str, policy: CostPolicy) -> int:
        from routers import encoder

        return int(policy.rank(self._score(encoder.embed([text]))[0], self.expected_cost())[0])

    def _fit(self, embeddings: np.ndarray, scores: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LogisticPerExpert(EmbeddingBaseline):
    def __init__(self, experts: Sequence[str], regularization: float = 1.0) -> None:
        super().__init__(experts)
        self.name = "logistic"
        self.regularization = regularization
        self.coef = np.zeros((0, 0))
        self.intercept = np.zeros(0)

    def _fit(self, embeddings: np.ndarray, scores: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        coefs, intercepts = [], []
        for column in scores.T:
            labels = column >= 0.5  # graded scores count as right from half marks up
            if labels.all() or not labels.any():  # one class only: a constant prediction
                coefs.append(np.zeros(embeddings.shape[1]))
                intercepts.append(20.0 if labels.all() else -20.0)
                continue
            model = LogisticRegression(C=self.regularization, max_iter=2000).fit(embeddings, labels)
            coefs.append(model.coef_[0])
            intercepts.append(float(model.intercept_[0]))
        self.coef, self.intercept = np.array(coefs), np.array(intercepts)

    def _score(self, embeddings: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(embeddings @ self.coef.T + self.intercept)))


class NearestNeighbours(EmbeddingBaseline):
    def __init__(self, experts: Sequence[str], k: int = 40) -> None:
        super().__init__(experts)
        self.name = f"knn-{k}"
        self.k = k
        self.train_embeddings = np.zeros((0, 0), dtype=np.float32)
        self.train_scores = np.zeros((0, len(self.experts)))

    def _fit(self, embeddings: np.ndarray, scores: np.ndarray) -> None:
        self.train_embeddings, self.train_scores = embeddings, scores

    def _score(self, embeddings: np.ndarray) -> np.ndarray:
        return neighbourhood_scores(embeddings, self.train_embeddings, self.train_scores, self.k)


def build_baselines(names: Sequence[str], data: RoutingDataset, *, knn_k: int = 40) -> list[Baseline]:
    """The named baselines (see `BASELINES`; `single` expands to one per expert), fitted on `data`'s
    train split; the true-label reference on train + dev, as the pool README's reference figure is."""
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    experts, train = data.experts, data.of_split("train")
    fitted: list[Baseline] = []
    for name in names:
        if name == "random":
            fitted.append(RandomChoice(experts).fit(train))
        elif name == "single":
            fitted.extend(SingleExpert(experts, expert).fit(train) for expert in experts)
        elif name == "oracle":
            fitted.append(Oracle(experts).fit(train))
        elif name == "true-label":
            if (data.domains != "").any():  # without domain labels there is nothing to route on
                fitted.append(TrueLabel(experts).fit(data.subset(data.split != "test")))
        elif name == "logistic":
            fitted.append(LogisticPerExpert(experts).fit(train))
        elif name == "knn":
            fitted.append(NearestNeighbours(experts, knn_k).fit(train))
    return fitted
