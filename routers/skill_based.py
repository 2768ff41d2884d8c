"""skill-based (Symbolic-MoE): infer a query's fine-grained skills, recruit the experts most competent at them.

Skills are the most specific tag of each query (the pool's `src` subject, e.g.
`ori_mmlu-high_school_physics`) or, when the data has no tags, clusters of query features. A
logistic regression over the query features (`routers.features`) infers skills; an expert's profile is its
mean reward per skill on train+dev, shrunk toward its overall mean where a skill has few queries.
A query's score per expert is its competence summed over the top-s inferred skills, weighted by
their probabilities: the top k experts are recruited and the most competent expert overall
aggregates their answers, as the paper picks the single best aggregator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.base import Decision
from routers.embedding_domain import DomainClassifier
from routers.features import DEFAULT_KIND, QueryFeatures
from routers.manifest import ExpertProfile, Manifest
from routers.quality import QualityRouter, routing_metrics, smoothed_quality

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset
    from routers.policy import CostPolicy

SKILLS_FILE = "skill_classifier.npz"
PROFILES_FILE = "profiles.npz"
STRENGTHS = (2.0, 5.0, 10.0, 20.0, 50.0)
TOP_SKILLS = (1, 2, 3, 5, 8)


def skill_labels(train: RoutingDataset, features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """One skill per train query, and where the vocabulary came from."""
    if all(train.tags):
        return np.array([tags[-1] for tags in train.tags], dtype=object), "tags"
    from sklearn.cluster import KMeans

    clusters = int(np.clip(np.sqrt(len(train) / 4), 2, 100))  # enough queries per cluster to profile it
    labels = KMeans(clusters, n_init=3, random_state=seed).fit_predict(features)
    return np.array([f"cluster-{label}" for label in labels], dtype=object), "embedding-clusters"


def top_skill_weights(probs: np.ndarray, top: int) -> np.ndarray:
    """The skill probabilities with all but the `top` largest per row zeroed, rows renormalised."""
    if top < probs.shape[1]:
        cutoff = -np.partition(-probs, top - 1, axis=1)[:, top - 1 : top]
        probs = np.where(probs >= cutoff, probs, 0.0)
    return probs / probs.sum(axis=1, keepdims=True)


class SkillBasedRouter(QualityRouter):
    family = "skill-based"

    def __init__(
        self,
        experts: Sequence[ExpertProfile],
        manifest: Manifest | None = None,
        skills: DomainClassifier | None = None,
        competence: np.ndarray | None = None,
        features: QueryFeatures | None = None,
    ) -> None:
        super().__init__(experts, manifest)
        self.skills = skills
        self.features = features
        self.competence = competence  # [n_skills, m], rows in skills.classes order
        params = manifest.params if manifest else {}
        self.top_skills = int(params.get("top_skills", 3))
        self.k = int(params.get("k", 1))

    def fit(
        self,
        train: RoutingDataset,
        dev: RoutingDataset,
        *,
        k: int = 1,
        features: str = DEFAULT_KIND,
        name: str = "skill-based",
    ) -> Self:
        """Fit skill inference on train, tune top-s and the prior strength on dev, profile on train+dev."""
        from sklearn.linear_model import LogisticRegression

        self.features = QueryFeatures.fit(features, train.queries.tolist())
        train_x = self.features.of_training(train.queries.tolist())
        dev_x = self.features.of_training(dev.queries.tolist())
        labels, vocabulary = skill_labels(train, train_x)
        # C=10: on static+lexical features the small-experts dev skill accuracy was 0.672 against 0.595 at C=1.
        model = LogisticRegression(C=10.0, max_iter=1000).fit(train_x, labels)
        skills = DomainClassifier(
            tuple(model.classes_.tolist()), model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
        )
        # A dev query's skill is unknown without tags: tune by the expert picked, not by skill accuracy.
        dev_probs = skills.predict_proba(dev_x)

        def dev_accuracy(strength: float, top: int) -> float:
            competence = smoothed_quality(labels, train.scores, skills.classes, strength)
            predicted = top_skill_weights(dev_probs, min(top, len(skills.classes))) @ competence
            return routing_metrics("dev", predicted, dev)["dev_accuracy"]

        strength, top = max(itertools.product(STRENGTHS, TOP_SKILLS), key=lambda grid: dev_accuracy(*grid))
        self.skills, self.k = skills, k
        self.top_skills = min(top, len(skills.classes))
        self.competence = smoothed_quality(labels, train.scores, skills.classes, strength)
        metrics = routing_metrics("dev", self._competence_of(dev_probs), dev)  # train-only profiles: honest dev
        if vocabulary == "tags":
            dev_labels = np.array([tags[-1] if tags else "" for tags in dev.tags], dtype=object)
            metrics["dev_skill_accuracy"] = float(
                np.mean(np.array(skills.classes)[dev_probs.argmax(axis=1)] == dev_labels)
            )
        # Final profiles use dev too: more queries per skill, and the skill labels are gold, not predicted.
        both_labels = np.concatenate([labels, skill_labels_for(dev, skills, dev_probs, vocabulary)])
        self.competence = smoothed_quality(
            both_labels, np.concatenate([train.scores, dev.scores]), skills.classes, strength
        )
        params: dict[str, Any] = {
            **self.features.params(),
            "skill_vocabulary": vocabulary,
            "skills": list(skills.classes),
            "top_skills": self.top_skills,
            "prior_strength": strength,
            "k": k,
            "aggregator": self.experts[int(np.argmax(np.concatenate([train.scores, dev.scores]).mean(axis=0)))].name,
        }
        self._fitted(name, train, dev, metrics, params)
        return self

    def _competence_of(self, skill_probs: np.ndarray) -> np.ndarray:
        assert self.competence is not None
        return top_skill_weights(skill_probs, self.top_skills) @ self.competence

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.skills is None or self.features is None:
            raise RuntimeError("the router is not fitted")
        return self._competence_of(self.skills.predict_proba(self.features(texts)))

    def _decision(
        self, scores: np.ndarray, policy: CostPolicy | None, cost: np.ndarray | None, latency_ms: float
    ) -> Decision:
        decision = super()._decision(scores, policy, cost, latency_ms)
        decision.recruited = [ranked.name for ranked in decision.ranked[: self.k]]
        decision.aggregator = self.manifest.params["aggregator"] if self.manifest else None
        return decision

    def _save(self, directory: Path) -> None:
        assert self.skills is not None and self.competence is not None and self.features is not None
        self.skills.save(directory / SKILLS_FILE)
        self.features.save(directory)
        np.savez(directory / PROFILES_FILE, competence=self.competence)

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Self:
        with np.load(directory / PROFILES_FILE, allow_pickle=False) as data:
            competence = data["competence"]
        features = QueryFeatures.load(directory, manifest.params)
        return cls(experts, manifest, DomainClassifier.load(directory / SKILLS_FILE), competence, features)


def skill_labels_for(
    dataset: RoutingDataset, skills: DomainClassifier, probs: np.ndarray, vocabulary: str
) -> np.ndarray:
    """Skills of extra profiling rows: their tag when it is in the vocabulary, else the inferred skill."""
    inferred = np.array(skills.classes, dtype=object)[probs.argmax(axis=1)]
    if vocabulary != "tags":
        return inferred
    known = set(skills.classes)
    return np.array(
        [tags[-1] if tags and tags[-1] in known else guess for tags, guess in zip(dataset.tags, inferred, strict=True)],
        dtype=object,
    )
