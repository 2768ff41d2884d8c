"""Labels to route by: the data's own, or discovered from its queries and scores, chosen on dev.

bert-domain routes by a query's domain and skill-based by its skills: each predicts a label, then weighs
the experts' quality on that label. The data's labels (`domain`, or the most specific of `tags`) are used
when every train query has one. Otherwise the candidates are:
- `query-<k>`: k-means over the train queries' embeddings, c-BTM style: a query's label is its nearest centroid;
- `success-<k>`: k-means over which experts succeed around a query: each query's score vector averaged over
  its NEIGHBOURS nearest train queries (cosine), so a cluster gathers queries whose neighbourhoods favour the
  same experts. Raw score vectors are one noisy draw per query (0/1 rewards), which no classifier reads off
  the text (clustering them routed worst of all, below); the neighbourhood average can be read, and a
  query's label stays a function of its text alone, so dev queries get theirs by the same rule.
k runs over CLUSTERS, up to one cluster per MIN_CLUSTER_ROWS train queries (enough to profile the experts).
Each candidate is judged by how well the labels it leads to predict the experts' dev rewards (`dev_error`):
a logistic regression over the embeddings predicts the label (a stand-in for the family's own classifier,
fitted once on the winner), and the experts' smoothed train quality per label (the best of PROXY_STRENGTHS),
weighted by its probabilities, is the prediction.

`dev_error` judges the families' capacity too. It is the Brier score of the predicted qualities over every
dev query and expert, not the dev AUC of the cost-quality curve the evaluation reports: the AUC scores the
picked experts only, and its noise swamped the differences between settings. Over skill-based's 150
settings (pool tags; ZeroEval tags), dev AUC correlated 0.49 with test AUC on the pool against 0.86 for the
Brier score, and the Brier pick scored test AUC 0.5550 and 0.9088 where the dev-AUC pick scored 0.5508
and 0.9041 (the best setting: 0.5559 and 0.9094; a throwaway script).

Why given labels are not put to the same vote: with that stand-in on MiniLM embeddings (a throwaway script,
test AUC, labellings picked by dev AUC), discovery did not beat them. ZeroEval: domain 0.911; dev's pick of discovered labels
(success-16) 0.909, the best of them 0.911. MMLU-Pro pool: domain 0.542, tags 0.545; dev's pick (query-32)
0.542, and the domain beat every discovered labelling on dev. The vote would add the discovery's minutes to
every training for no gain. Clustering raw score vectors: 0.904-0.908 and 0.525-0.538.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from routers.quality import smoothed_quality

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

CLUSTERS = (4, 8, 16, 32, 64)
MIN_CLUSTER_ROWS = 20
NEIGHBOURS = 20
SOURCES = ("query", "success")
PROXY_C = 1.0  # the stand-in classifier's regularisation: unit-length embeddings, a few dozen classes
# The quality tables' priors a labelling is judged with, its best counting: a fixed prior favours few clusters.
PROXY_STRENGTHS = (2.0, 5.0, 10.0, 20.0, 50.0)
SEED = 0


@dataclass(frozen=True)
class Labels:
    """One labelling of the train and dev queries ("" where a dev query has no label)."""

    name: str  # `domain`, `tags`, `query-<k>`, `success-<k>`
    train: np.ndarray  # object [n_train]
    dev: np.ndarray  # object [n_dev]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.train.tolist()))

    def dev_accuracy(self, predicted: np.ndarray) -> float | None:
        """How often `predicted` (a classifier's labels for dev) is a labelled dev query's label; None without any."""
        known = self.dev != ""
        return float(np.mean(predicted[known] == self.dev[known])) if known.any() else None

    def with_dev(self, predicted: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Train's labels then dev's, to profile the experts on both (twice the queries per label): a dev query's
        own label (given, or discovered by the rule train's were) where `classes` has it, else `predicted`."""
        return np.concatenate([self.train, np.where(np.isin(self.dev, classes), self.dev, predicted)])


def given_labels(train: RoutingDataset, dev: RoutingDataset, source: str) -> Labels | None:
    """The data's `domain` or most specific tag (`source`), when every train query has one and there are two or more."""
    if source == "domain":
        labels, dev_labels = train.domains.astype(object), dev.domains.astype(object)
    else:
        labels = np.array([tags[-1] if tags else "" for tags in train.tags], dtype=object)
        dev_labels = np.array([tags[-1] if tags else "" for tags in dev.tags], dtype=object)
    if (labels == "").any() or len(set(labels.tolist())) < 2:
        return None
    return Labels(source, labels, dev_labels)


def cluster_counts(n_train: int) -> list[int]:
    """The grid's k that leave MIN_CLUSTER_ROWS train queries per cluster on average (2 for tiny data)."""
    return [k for k in CLUSTERS if k * MIN_CLUSTER_ROWS <= n_train] or [2]


def neighbourhood_scores(
    x: np.ndarray, train_x: np.ndarray, train_scores: np.ndarray, neighbours: int = NEIGHBOURS
) -> np.ndarray:
    """Per row of `x`, the mean score vector of its `neighbours` nearest train queries (unit vectors: cosine)."""
    k = min(neighbours, len(train_x))
    out = np.empty((len(x), train_scores.shape[1]))
    for start in range(0, len(x), 1024):  # bounds the similarity block's memory
        similarity = x[start : start + 1024] @ train_x.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        out[start : start + 1024] = train_scores[nearest].mean(axis=1)
    return out


def discovered_labels(train_x: np.ndarray, train_scores: np.ndarray, dev_x: np.ndarray) -> list[Labels]:
    """Every discovered labelling of the grid, from the train queries' unit-length embeddings and scores."""
    from sklearn.cluster import KMeans

    spaces = {
        "query": (train_x, dev_x),
        "success": (
            neighbourhood_scores(train_x, train_x, train_scores),
            neighbourhood_scores(dev_x, train_x, train_scores),
        ),
    }
    found = []
    for source in SOURCES:
        train_points, dev_points = spaces[source]
        for k in cluster_counts(len(train_x)):
            model = KMeans(k, n_init=3, random_state=SEED).fit(train_points)
            names = np.array([f"{source}-{k}:{i}" for i in range(k)], dtype=object)
            found.append(Labels(f"{source}-{k}", names[model.labels_], names[model.predict(dev_points)]))
    return found


def dev_error(predicted: np.ndarray, dev: RoutingDataset) -> float:
    """Mean squared error of the predicted qualities against every dev reward, each expert's on each query (the
    Brier score for 0/1 rewards): what label and capacity choices minimise. It scores every expert's prediction
    where a cost-quality curve scores the picked ones only: see the module docstring for why."""
    return float(np.mean((predicted - dev.scores) ** 2)) if len(dev) else 0.0


def route_labels(
    train: RoutingDataset, dev: RoutingDataset, source: str, embed: Callable[[list[str]], np.ndarray]
) -> tuple[Labels, dict[str, float]]:
    """The data's `source` labels (`domain` or `tags`) when every train query has one, else the discovered
    labelling whose predicted labels predict the experts' dev rewards best (the first of equals), with every
    discovered candidate's `dev_error`. `embed`: unit-length embeddings of texts, what the clusters are drawn in."""
    from sklearn.linear_model import LogisticRegression

    if (given := given_labels(train, dev, source)) is not None:
        return given, {}
    train_x, dev_x = embed(train.queries.tolist()), embed(dev.queries.tolist())
    candidates = discovered_labels(train_x, train.scores, dev_x)
    errors = {}
    for labels in candidates:
        proxy = LogisticRegression(C=PROXY_C, max_iter=300).fit(train_x, labels.train)
        probs = proxy.predict_proba(dev_x)
        errors[labels.name] = min(
            dev_error(probs @ smoothed_quality(labels.train, train.scores, proxy.classes_.tolist(), strength), dev)
            for strength in PROXY_STRENGTHS
        )
    return min(candidates, key=lambda labels: errors[labels.name]), errors
