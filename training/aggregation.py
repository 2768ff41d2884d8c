"""Offline replay of answer-aggregation strategies on the MMLU-Pro pool: vote, selection, cascade, recruit.

Cascades stop on the selector's confidence, on two experts agreeing, or on either (a confident first
answer is accepted alone, otherwise the experts are called until two agree). `escalation_frontier`
bounds what any stopping signal can reach with one escalation step.

Every strategy is scored on what it would have paid: the cost of a question is the sum of the pool's
costs of every expert the strategy called for it. A combined answer is right when some called expert
that chose the combined letter was right (same letter, same correctness: the pool has no exception).

Fitting follows the pool's protocol: models learn on train, choices between variants and thresholds
are made on dev, figures are reported on test. The per-question competence used as a feature is
out-of-fold on train, so the selector does not learn to trust an in-sample fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experts.aggregate import log_odds_weight, selection_features, weighted_vote
from training.pool import Pool

ExpertSet = tuple[int, ...]  # column indices into the pool's models


@dataclass(frozen=True)
class Signals:
    """What aggregation may know about each question of one split, before or after calling experts."""

    pred: np.ndarray  # str [n, m]: each expert's choice, "" when none
    correct: np.ndarray  # bool [n, m]
    cost: np.ndarray  # float [n, m]
    categories: np.ndarray  # str [n]
    competence: np.ndarray  # float [n, m]: predicted p(expert right | question embedding)
    profile: np.ndarray  # float [n, m]: the expert's training accuracy on the question's category
    weights: np.ndarray  # float [n, m]: log-odds vote weights of the expert's category profile

    def __len__(self) -> int:
        return len(self.pred)


@dataclass(frozen=True)
class Outcome:
    """One strategy's replay on one split."""

    name: str
    correct: np.ndarray  # bool [n]: the combined answer was right
    cost: np.ndarray  # float [n]: USD of every expert called
    any_called_right: np.ndarray  # bool [n]: an oracle selector over the called answers would be right

    def summary(self) -> dict[str, float | str]:
        return {
            "strategy": self.name,
            "accuracy": round(float(self.correct.mean()), 4),
            "cost_per_1k": round(float(self.cost.mean() * 1000), 4),
            "oracle_over_called": round(float(self.any_called_right.mean()), 4),
        }


def category_accuracy(categories: np.ndarray, correct: np.ndarray, prior: float = 20.0) -> dict[str, np.ndarray]:
    """Per category, each expert's accuracy shrunk toward its overall accuracy by `prior` pseudo-questions."""
    overall = correct.mean(axis=0)
    return {
        category: (correct[categories == category].sum(axis=0) + prior * overall)
        / ((categories == category).sum() + prior)
        for category in np.unique(categories)
    }


def profile_matrix(categories: np.ndarray, table: dict[str, np.ndarray], fallback: np.ndarray) -> np.ndarray:
    return np.stack([table.get(category, fallback) for category in categories])


class Competence:
    """Per expert, a logistic regression from the question embedding to p(its answer is right)."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.models: list = []

    def fit(self, embeddings: np.ndarray, correct: np.ndarray) -> Competence:
        from sklearn.linear_model import LogisticRegression

        self.models = [LogisticRegression(C=self.c, max_iter=500).fit(embeddings, column) for column in correct.T]
        return self

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return np.stack([model.predict_proba(embeddings)[:, 1] for model in self.models], axis=1)


def out_of_fold_competence(embeddings: np.ndarray, correct: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import KFold

    result = np.zeros(correct.shape)
    for fit_rows, held_rows in KFold(folds, shuffle=True, random_state=seed).split(embeddings):
        result[held_rows] = Competence().fit(embeddings[fit_rows], correct[fit_rows]).predict(embeddings[held_rows])
    return result


def build_signals(pool: Pool, embeddings: np.ndarray) -> dict[str, Signals]:
    """Signals for train (out-of-fold competence), dev and test, every model fitted on train only."""
    train = pool.mask("train")
    accuracy = pool.correct[train].mean(axis=0)
    table = category_accuracy(pool.categories[train], pool.correct[train])
    competence = Competence().fit(embeddings[train], pool.correct[train])
    signals = {}
    for split in ("train", "dev", "test"):
        rows = pool.mask(split)
        profile = profile_matrix(pool.categories[rows], table, accuracy)
        signals[split] = Signals(
            pred=pool.pred[rows],
            correct=pool.correct[rows],
            cost=pool.cost[rows],
            categories=pool.categories[rows],
            competence=(
                out_of_fold_competence(embeddings[rows], pool.correct[rows])
                if split == "train"
                else competence.predict(embeddings[rows])
            ),
            profile=profile,
            weights=np.vectorize(log_odds_weight)(profile),
        )
    return signals


def vote_weights(categories: np.ndarray, correct: np.ndarray, per_category: bool) -> dict[str, np.ndarray] | np.ndarray:
    """Log-odds weights from the accuracy in `correct`: one per expert, or one per (category, expert)."""
    if not per_category:
        return np.array([log_odds_weight(a) for a in correct.mean(axis=0)])
    table = category_accuracy(categories, correct)
    return {category: np.array([log_odds_weight(a) for a in accuracy]) for category, accuracy in table.items()}


def _combined(signals: Signals, experts: Sequence[ExpertSet], letters: Sequence[str | None]) -> np.ndarray:
    """Whether each question's combined letter was right: some called expert chose it and was right."""
    return np.array(
        [
            letter is not None and any(signals.pred[i, j] == letter and signals.correct[i, j] for j in called)
            for i, (called, letter) in enumerate(zip(experts, letters, strict=True))
        ],
        dtype=bool,
    )


def _outcome(name: str, signals: Signals, experts: Sequence[ExpertSet], correct: np.ndarray) -> Outcome:
    cost = np.array([signals.cost[i, list(called)].sum() for i, called in enumerate(experts)])
    any_right = np.array([signals.correct[i, list(called)].any() for i, called in enumerate(experts)])
    return Outcome(name, correct, cost, any_right)


def replay_vote(
    name: str, signals: Signals, sets: Sequence[ExpertSet], weights: dict[str, np.ndarray] | np.ndarray
) -> Outcome:
    """Weighted vote of each question's called experts; the heaviest expert's letter wins a tie."""
    letters = []
    for i, called in enumerate(sets):
        w = weights[signals.categories[i]] if isinstance(weights, dict) else weights
        order = sorted(called, key=lambda j: -w[j])
        letters.append(weighted_vote([signals.pred[i, j] for j in order], [w[j] for j in order]))
    return _outcome(name, signals, sets, _combined(signals, sets, letters))


def _features(signals: Signals, sets: Sequence[ExpertSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate rows for (question i, its called set): features, question index, expert index."""
    blocks, question, expert = [], [], []
    n_experts = signals.pred.shape[1]
    for i, called in enumerate(sets):
        rows, positions = selection_features(
            called,
            [signals.pred[i, j] for j in called],
            signals.competence[i],
            signals.profile[i],
            signals.weights[i],
            n_experts,
        )
        blocks.append(rows)
        question.extend([i] * len(positions))
        expert.extend(called[p] for p in positions)
    return np.concatenate(blocks), np.array(question, dtype=int), np.array(expert, dtype=int)


class Selector:
    """Scores each (question, candidate answer) for correctness; the best-scored answer is chosen."""

    def __init__(self, kind: str = "boosting") -> None:
        if kind not in ("boosting", "logistic"):
            raise ValueError(f"unknown selector kind {kind!r}")
        self.kind = kind
        self.model = None

    def fit(self, signals: Signals, expert_sets: Sequence[ExpertSet]) -> Selector:
        """Learns from every question answered by each of `expert_sets` (the sets it will select among)."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        parts = [_features(signals, [s] * len(signals)) for s in expert_sets]
        features = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([signals.correct[p[1], p[2]] for p in parts])
        self.model = (
            HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=31, random_state=0)
            if self.kind == "boosting"
            else make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        ).fit(features, labels)
        return self

    def choose(self, signals: Signals, sets: Sequence[ExpertSet]) -> tuple[np.ndarray, np.ndarray]:
        """Per question, the chosen expert (-1 when no called expert named a choice) and its score."""
        features, question, expert = _features(signals, sets)
        scores = self.model.predict_proba(features)[:, 1]
        chosen, confidence = np.full(len(sets), -1), np.zeros(len(sets))
        for score, i, j in zip(scores, question, expert, strict=True):
            if score > confidence[i]:
                chosen[i], confidence[i] = j, score
        return chosen, confidence


def _chosen_correct(signals: Signals, chosen: np.ndarray) -> np.ndarray:
    return np.where(chosen >= 0, signals.correct[np.arange(len(chosen)), np.maximum(chosen, 0)], False)


def replay_selection(name: str, signals: Signals, selector: Selector, sets: Sequence[ExpertSet]) -> Outcome:
    chosen, _ = selector.choose(signals, sets)
    return _outcome(name, signals, sets, _chosen_correct(signals, chosen))


def replay_cascade(
    name: str, signals: Signals, selector: Selector, order: ExpertSet, thresholds: Sequence[float]
) -> list[Outcome]:
    """Call `order`'s experts one by one; stop once the selector's best answer scores >= the threshold.

    The last expert's answer always ends the cascade. Threshold 0 calls only the first expert;
    threshold 1 calls them all.
    """
    n = len(signals)
    steps = [selector.choose(signals, [order[: t + 1]] * n) for t in range(len(order))]
    confidence = np.stack([conf for _, conf in steps], axis=1)
    confidence[:, -1] = np.inf
    outcomes = []
    for threshold in thresholds:
        stop = np.argmax(confidence >= threshold, axis=1)
        chosen = np.array([steps[t][0][i] for i, t in enumerate(stop)])
        sets = [order[: t + 1] for t in stop]
        outcomes.append(_outcome(f"{name}@{threshold:g}", signals, sets, _chosen_correct(signals, chosen)))
    return outcomes


def replay_agreement_cascade(name: str, signals: Signals, order: ExpertSet, sure: np.ndarray | None = None) -> Outcome:
    """Call the first two; stop as soon as two called experts name the same letter; answer by weighted vote.

    Where `sure` (bool [n]) is set, the first expert's answer alone ends the cascade.
    """
    sets, letters = [], []
    for i in range(len(signals)):
        called: list[int] = []
        for j in order:
            called.append(j)
            named = [signals.pred[i, k] for k in called if signals.pred[i, k]]
            if (sure is not None and sure[i]) or (len(called) >= 2 and len(named) > len(set(named))):
                break
        weights = signals.weights[i]
        heaviest = sorted(called, key=lambda k: -weights[k])
        letters.append(weighted_vote([signals.pred[i, k] for k in heaviest], [weights[k] for k in heaviest]))
        sets.append(tuple(called))
    return _outcome(name, signals, sets, _combined(signals, sets, letters))


def replay_confident_agreement(
    name: str, signals: Signals, selector: Selector, order: ExpertSet, thresholds: Sequence[float]
) -> list[Outcome]:
    """An agreement cascade that accepts the first expert's answer alone when the selector scores it >= the threshold.

    Threshold 0 calls only the first expert; above 1 it is the plain agreement cascade.
    """
    _, confidence = selector.choose(signals, [order[:1]] * len(signals))
    return [
        replay_agreement_cascade(f"{name}@{threshold:g}", signals, order, confidence >= threshold)
        for threshold in thresholds
    ]


def escalation_frontier(
    first: Outcome, last_correct: np.ndarray, last_cost: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and mean cost, for every k from 0 to n, of answering with `first` on the k questions that
    score highest and escalating the others to one more expert, whose answer is final there.

    `first` is paid on every question (its answers are what a stopping signal reads). Sweeping k is
    sweeping a threshold on `score` with the threshold chosen after seeing the outcome: an upper bound of
    what that signal can do on these questions, not a tuned strategy.
    """
    ranked = np.argsort(-score, kind="stable")

    def top(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(values[ranked])])

    accuracy = (top(first.correct) + last_correct.sum() - top(last_correct)) / len(score)
    cost = (first.cost.sum() + last_cost.sum() - top(last_cost)) / len(score)
    return accuracy, cost


def recruit(signals: Signals, experts: ExpertSet, k: int) -> list[ExpertSet]:
    """Per question, the `k` experts of `experts` with the highest predicted competence, best first."""
    columns = np.array(experts)
    ranked = np.argsort(-signals.competence[:, columns], axis=1, kind="stable")[:, :k]
    return [tuple(int(j) for j in columns[row]) for row in ranked]
