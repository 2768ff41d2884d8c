"""skill-based (Symbolic-MoE): infer a query's fine-grained skills, recruit the experts most competent at them.

Skills are the most specific tag of each query (the pool's `src` subject, e.g.
`ori_mmlu-high_school_physics`) or, when the data has no tags, discovered from the queries and the
experts' scores (`routers.discovery`: clusters of the queries' static embeddings, chosen on dev). A
logistic regression over the query features (`routers.features`) infers skills; an expert's profile is its
mean reward per skill, shrunk toward its overall mean where a skill has few queries.
A query's score per expert is its competence summed over the top-s inferred skills, weighted by
their probabilities: the top k experts are recruited and the most competent expert overall
aggregates their answers, as the paper picks the single best aggregator.

Capacity is chosen on dev with train-only profiles, by how well they predict the experts' dev rewards
(`routers.discovery.dev_error`): the feature kind (among `routers.features.CHEAP_KINDS` unless one is given), the
classifier's C, the prior strength and s. The final profiles count dev's queries too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from routers.base import Decision
from routers.discovery import Labels, dev_error, route_labels
from routers.embedding_domain import DomainClassifier
from routers.features import CHEAP_KINDS, QueryFeatures
from routers.manifest import ExpertProfile, Manifest
from routers.quality import FeatureRouter, routing_metrics, smoothed_quality

if TYPE_CHECKING:
    from routers.dataset import RoutingDataset
    from routers.policy import CostPolicy

SKILLS_FILE = "skill_classifier.npz"
PROFILES_FILE = "profiles.npz"
CS = (1.0, 10.0, 100.0)  # the skill classifier's inverse regularisation
STRENGTHS = (2.0, 5.0, 10.0, 20.0, 50.0)
TOP_SKILLS = (1, 2, 3, 5, 8)


def fit_skills(features: np.ndarray, labels: np.ndarray, regularisation: float) -> DomainClassifier:
    """A multinomial logistic regression from query features to skills, fitted on a sparse copy: the 10,000
    lexical columns are mostly zeros, which a dense fit multiplies through at every step."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=regularisation, max_iter=1000).fit(csr_matrix(features), labels)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # one row, the second class's log-odds: as two softmax logits, the same sigmoid
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return DomainClassifier(tuple(model.classes_.tolist()), coef.astype(np.float32), intercept.astype(np.float32))


def top_skill_weights(probs: np.ndarray, top: int) -> np.ndarray:
    """The skill probabilities with all but the `top` largest per row zeroed, rows renormalised."""
    if top < probs.shape[1]:
        cutoff = -np.partition(-probs, top - 1, axis=1)[:, top - 1 : top]
        probs = np.where(probs >= cutoff, probs, 0.0)
    return probs / probs.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Capacity:
    """One setting of the dev search, with what it was judged by."""

    error: float
    features: QueryFeatures
    skills: DomainClassifier
    dev_probs: np.ndarray
    regularisation: float
    strength: float
    top: int


def search_capacity(kinds: Sequence[str], labels: Labels, train: RoutingDataset, dev: RoutingDataset) -> Capacity:
    """The feature kind, C, prior strength and top-s whose train-only profiles predict the dev rewards best
    (`routers.discovery.dev_error`; the first of equals)."""
    texts, dev_texts = train.queries.tolist(), dev.queries.tolist()
    best: Capacity | None = None
    for kind in kinds:
        query_features = QueryFeatures.fit(kind, texts)
        train_x, dev_x = query_features.of_training(texts), query_features.of_training(dev_texts)
        for regularisation in CS:
            skills = fit_skills(train_x, labels.train, regularisation)
            dev_probs = skills.predict_proba(dev_x)
            for strength, top in itertools.product(STRENGTHS, TOP_SKILLS):
                top = min(top, len(skills.classes))
                competence = smoothed_quality(labels.train, train.scores, skills.classes, strength)
                error = dev_error(top_skill_weights(dev_probs, top) @ competence, dev)
                if best is None or error < best.error:
                    best = Capacity(error, query_features, skills, dev_probs, regularisation, strength, top)
    assert best is not None
    return best


class SkillBasedRouter(FeatureRouter):
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
        features: str | None = None,
        name: str = "skill-based",
    ) -> Self:
        """Choose the skills (`routers.discovery`), then the feature kind (CHEAP_KINDS when `features` is None),
        the classifier's C, the prior strength and top-s on dev; profile the experts on train+dev."""
        kinds = CHEAP_KINDS if features is None else (features,)
        # Without tags, skills are discovered in the embedding space the (first) kind reads.
        embedding = QueryFeatures.fit(kinds[0].partition("+")[0], train.queries.tolist())
        labels, label_errors = route_labels(train, dev, "tags", embedding.of_training)
        best = search_capacity(kinds, labels, train, dev)
        skills, dev_probs, strength = best.skills, best.dev_probs, best.strength
        self.features, self.skills, self.k = best.features, skills, k
        self.top_skills = best.top
        self.competence = smoothed_quality(labels.train, train.scores, skills.classes, strength)
        self.dev_quality = self._competence_of(dev_probs)  # train-only profiles: honest dev
        metrics = routing_metrics("dev", self.dev_quality, dev)
        metrics["dev_error"] = best.error
        inferred = np.array(skills.classes, dtype=object)[dev_probs.argmax(axis=1)]
        if (accuracy := labels.dev_accuracy(inferred)) is not None:
            metrics["dev_skill_accuracy"] = accuracy
        both_scores = np.concatenate([train.scores, dev.scores])
        self.competence = smoothed_quality(
            labels.with_dev(inferred, skills.classes), both_scores, skills.classes, strength
        )
        params: dict[str, Any] = {
            **self.features.params(),
            "skill_vocabulary": labels.name,
            "skill_vocabulary_dev_error": label_errors,
            "skills": list(skills.classes),
            "classifier_c": best.regularisation,
            "top_skills": self.top_skills,
            "prior_strength": strength,
            "k": k,
            "aggregator": self.experts[int(np.argmax(both_scores.mean(axis=0)))].name,
        }
        self._fitted(name, train, dev, metrics, params)
        return self

    def _competence_of(self, skill_probs: np.ndarray) -> np.ndarray:
        assert self.competence is not None
        return top_skill_weights(skill_probs, self.top_skills) @ self.competence

    def score_features(self, x: np.ndarray) -> np.ndarray:
        if self.skills is None:
            raise RuntimeError("the router is not fitted")
        return self._competence_of(self.skills.predict_proba(x))

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
