"""embedding-domain: query features, a logistic regression over domains, domains mapped to experts.

The classifier predicts the query's domain (an MMLU-Pro category) and knows nothing of the experts;
the experts' declared domains turn its probabilities into scores when the router is built, so a
config that moves a domain from one expert to another needs no retraining.

Domain-to-expert rule: an expert's score is the sum of the probabilities of the domains it declares
(a domain declared by several experts counts fully for each). A domain no expert declares counts
for every expert declaring `other`; when none does, it is spread evenly over all experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from routers.base import Router
from routers.features import DEFAULT_KIND, QueryFeatures
from routers.manifest import ExpertProfile, Manifest, data_hash

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset

FALLBACK_DOMAIN = "other"
CLASSIFIER_FILE = "domain_classifier.npz"


@dataclass(frozen=True)
class DomainClassifier:
    """A fitted multinomial logistic regression, kept as plain arrays: predicting needs numpy only."""

    classes: tuple[str, ...]
    coef: np.ndarray  # [n_classes, dim]
    intercept: np.ndarray  # [n_classes]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        np.savez(path, classes=np.array(self.classes), coef=self.coef, intercept=self.intercept)

    @classmethod
    def load(cls, path: Path) -> DomainClassifier:
        with np.load(path, allow_pickle=False) as data:
            return cls(tuple(data["classes"].tolist()), data["coef"], data["intercept"])


def domain_routing(domains: Sequence[str], experts: Sequence[ExpertProfile]) -> np.ndarray:
    """Shape (len(domains), len(experts)): how much a domain's probability adds to each expert's score."""
    declared = [{d.strip().lower() for d in expert.domains} for expert in experts]
    fallback = np.array([FALLBACK_DOMAIN in names for names in declared], dtype=np.float64)
    routing = np.zeros((len(domains), len(experts)))
    for row, domain in enumerate(domains):
        owners = np.array([domain.strip().lower() in names for names in declared], dtype=np.float64)
        if owners.any():
            routing[row] = owners
        elif fallback.any():
            routing[row] = fallback
        else:
            routing[row] = 1.0 / len(experts)
    return routing


class EmbeddingDomainRouter(Router):
    family = "embedding-domain"
    experts_from_config = True  # routes by the domains the gateway's experts declare, not the data's experts

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        classifier: DomainClassifier | None = None,
        features: QueryFeatures | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self.classifier = classifier
        self.features = features
        self._routing = domain_routing(classifier.classes, self.experts) if classifier else None

    def fit(
        self,
        train: RoutingDataset,
        dev: RoutingDataset,
        *,
        features: str = DEFAULT_KIND,
        regularization: float = 10.0,
        name: str = "embedding-domain",
    ) -> Self:
        """Fit the domain classifier on the train split's (query, domain) pairs; score it on dev's."""
        from sklearn.linear_model import LogisticRegression

        texts, domains = train.queries.tolist(), train.domains.tolist()
        self.features = QueryFeatures.fit(features, texts)
        model = LogisticRegression(C=regularization, max_iter=3000)
        model.fit(self.features.of_training(texts), np.asarray(domains))
        self.classifier = DomainClassifier(
            tuple(model.classes_.tolist()), model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
        )
        self._routing = domain_routing(self.classifier.classes, self.experts)

        metrics: dict[str, float] = {"n_train": float(len(texts))}
        if len(dev):
            metrics.update(self.evaluate(self.features.of_training(dev.queries.tolist()), dev.domains.tolist()))
        self.manifest = Manifest(
            family=self.family,
            name=name,
            version=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            data_hash=data_hash([{"text": t, "domain": d} for t, d in zip(texts, domains, strict=True)]),
            experts=[expert.name for expert in self.experts],
            metrics=metrics,
            params={
                **self.features.params(),
                "classifier": "LogisticRegression",
                "regularization": regularization,
                "domains": list(self.classifier.classes),
            },
        )
        return self

    def evaluate(self, features: np.ndarray, domains: Sequence[str]) -> dict[str, float]:
        """Dev metrics: domain accuracy, and how often the top expert is one the true domain maps to."""
        assert self.classifier is not None and self._routing is not None
        index = {domain: i for i, domain in enumerate(self.classifier.classes)}
        truth = np.array([index.get(domain, -1) for domain in domains])
        probs = self.classifier.predict_proba(features)
        chosen = np.argmax(probs @ self._routing, axis=1)
        weights = self._routing[truth.clip(0)]  # a domain unseen in training counts as a miss below
        right_expert = (truth >= 0) & (weights[np.arange(len(truth)), chosen] == weights.max(axis=1))
        return {
            "n_dev": float(len(domains)),
            "dev_domain_accuracy": float(np.mean(np.argmax(probs, axis=1) == truth)),
            "dev_expert_accuracy": float(np.mean(right_expert)),
        }

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.classifier is None or self._routing is None or self.features is None:
            raise RuntimeError("the router is not fitted")
        return self.classifier.predict_proba(self.features(texts)) @ self._routing

    def _save(self, directory: Path) -> None:
        assert self.classifier is not None and self.features is not None
        self.classifier.save(directory / CLASSIFIER_FILE)
        self.features.save(directory)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        features = QueryFeatures.load(directory, manifest.params)
        return cls(experts, manifest, DomainClassifier.load(directory / CLASSIFIER_FILE), features)
