"""Answer aggregation: choice extraction, weighted vote, cascades, escalation frontiers, a selector on pool data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experts.aggregate import CANDIDATE_FEATURES, extract_choice, log_odds_weight, selection_features, weighted_vote
from training import aggregation as agg
from training.pool import default_pool_dir, load_pool


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Adverts must not cause serious offence. The answer is (I).\n\n", "I"),
        ("so 2 + 2 = 4, and the answer is C.", "C"),
        ("The answer is (B).\n\nNow, combining all the answers:\nThe answer is (F).", "B"),  # the first, as MMLU-Pro
        ("The closest option is (D) 82.19.\nAnswer: (D)\n\n", "D"),
        ("I cannot determine the answer from the options provided.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_choice(text: str | None, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_extract_choice_rejects_letters_beyond_the_options() -> None:
    assert extract_choice("The answer is (E).", n_options=4) is None
    assert extract_choice("The answer is (D).", n_options=4) == "D"


def test_log_odds_weight() -> None:
    assert log_odds_weight(0.1) == pytest.approx(0.0)  # chance on ten options carries no weight
    assert log_odds_weight(0.5) == pytest.approx(math.log(9))


def test_weighted_vote_with_hand_computed_weights() -> None:
    weights = [log_odds_weight(0.6), log_odds_weight(0.4), log_odds_weight(0.4)]  # 2.603, 1.792, 1.792
    assert weighted_vote(["A", "B", "B"], weights) == "B"  # 3.58 beats 2.60
    assert weighted_vote(["A", "B", "C"], weights) == "A"
    assert weighted_vote(["A", None, "B"], [1.0, 5.0, 2.0]) == "B"  # no choice, no vote
    assert weighted_vote(["A", "B"], [1.0, 1.0]) == "A"  # a tie goes to the letter named first
    assert weighted_vote([None, ""], [1.0, 1.0]) is None


def test_selection_features_count_agreement() -> None:
    rows, positions = selection_features(
        experts=(0, 2, 3),
        choices=["A", "A", None],
        competence=np.array([0.7, 0.0, 0.4, 0.9]),
        profile=np.array([0.6, 0.0, 0.5, 0.8]),
        weights=np.array([2.0, 0.0, 1.0, 3.0]),
        n_experts=4,
    )
    assert positions == [0, 1]  # the expert without a choice is no candidate
    named = dict(zip(CANDIDATE_FEATURES, rows[0, 4:], strict=True))
    assert rows[0, :4].tolist() == [1, 0, 0, 0]
    assert named == {
        "competence": 0.7,
        "profile": 0.6,
        "supporters": 0.5,
        "support_competence": 0.4,
        "rival_competence": 0.0,
        "vote_margin": 3.0,
        "n_called": 3,
    }


def _tiny_signals() -> agg.Signals:
    """Three questions, two experts: a cheap one (cost 1) and a dear one (cost 10)."""
    return agg.Signals(
        pred=np.array([["A", "A"], ["B", "C"], ["D", "E"]]),
        correct=np.array([[True, True], [False, True], [True, False]]),
        cost=np.array([[1.0, 10.0]] * 3),
        categories=np.array(["x", "x", "x"]),
        competence=np.zeros((3, 2)),
        profile=np.zeros((3, 2)),
        weights=np.ones((3, 2)),
    )


class _FixedSelector(agg.Selector):
    """Scores read from a table: the cheap expert alone scores per question; with two, the dear one wins."""

    def __init__(self, alone: list[float]) -> None:
        self.alone = alone

    def choose(self, signals: agg.Signals, sets: list[agg.ExpertSet]) -> tuple[np.ndarray, np.ndarray]:
        if len(sets[0]) == 1:
            return np.zeros(len(sets), dtype=int), np.array(self.alone)
        return np.ones(len(sets), dtype=int), np.full(len(sets), 0.9)


def test_cascade_stops_or_escalates_per_threshold() -> None:
    signals = _tiny_signals()
    selector = _FixedSelector(alone=[0.8, 0.3, 0.6])
    low, middle, high = agg.replay_cascade("c", signals, selector, (0, 1), [0.2, 0.5, 0.9])
    # 0.2: everyone stops at the cheap expert: right on questions 1 and 3, cost 1 each.
    assert low.correct.tolist() == [True, False, True] and low.cost.tolist() == [1, 1, 1]
    # 0.5: question 2 (score 0.3) escalates and the dear expert gets it right: 3/3 for (1 + 11 + 1) / 3.
    assert middle.correct.mean() == 1.0 and middle.cost.mean() == pytest.approx(13 / 3)
    # 0.9: all escalate; the dear expert is wrong on question 3: 2/3 at cost 11.
    assert high.correct.mean() == pytest.approx(2 / 3) and high.cost.tolist() == [11, 11, 11]
    assert high.any_called_right.all()


def test_agreement_cascade_and_vote() -> None:
    signals = _tiny_signals()
    vote = agg.replay_vote("v", signals, [(0, 1)] * 3, np.array([1.0, 2.0]))
    assert vote.correct.tolist() == [True, True, False]  # the heavier dear expert decides disagreements
    cascade = agg.replay_agreement_cascade("a", signals, (0, 1))
    assert cascade.cost.tolist() == [11, 11, 11]  # two calls are needed before anyone can agree


def test_agreement_cascade_accepts_a_sure_first_answer_alone() -> None:
    signals = _tiny_signals()
    cascade = agg.replay_agreement_cascade("a", signals, (0, 1), sure=np.array([False, True, True]))
    assert cascade.cost.tolist() == [11, 1, 1]
    assert cascade.correct.tolist() == [True, False, True]  # the cheap expert alone: wrong on B, right on D


def test_confident_agreement_cascade_stops_on_a_confident_first_answer() -> None:
    signals = _tiny_signals()
    selector = _FixedSelector(alone=[0.8, 0.3, 0.6])
    low, middle, high = agg.replay_confident_agreement("c", signals, selector, (0, 1), [0.0, 0.5, 0.9])
    assert low.cost.tolist() == [1, 1, 1] and low.correct.tolist() == [True, False, True]
    # 0.5: question 2 (score 0.3) calls both; B and C tie on equal weights and B, named first, is wrong.
    assert middle.cost.tolist() == [1, 11, 1] and middle.correct.tolist() == [True, False, True]
    assert middle.name == "c@0.5"
    # 0.9: nobody is confident enough: the plain agreement cascade.
    plain = agg.replay_agreement_cascade("a", signals, (0, 1))
    assert high.cost.tolist() == plain.cost.tolist() and high.correct.tolist() == plain.correct.tolist()


def test_escalation_frontier_by_hand() -> None:
    # Four questions; the cheap first stage (cost 1 each) is right on 0 and 3; the dear expert (cost 10) on 1, 2, 3.
    first = agg.Outcome("f", np.array([True, False, False, True]), np.ones(4), np.array([True, False, False, True]))
    dear_right, dear_cost = np.array([False, True, True, True]), np.full(4, 10.0)
    accuracy, cost = agg.escalation_frontier(first, dear_right, dear_cost, score=np.array([0.9, 0.1, 0.5, 0.7]))
    # Trusting the first stage on 0, then 3, then 2, then 1 (highest score first).
    assert accuracy.tolist() == pytest.approx([3 / 4, 4 / 4, 4 / 4, 3 / 4, 2 / 4])
    assert cost.tolist() == pytest.approx([11, 8.5, 6, 3.5, 1])


def test_recruit_ranks_by_competence() -> None:
    signals = _tiny_signals()
    signals = agg.Signals(**{**vars(signals), "competence": np.array([[0.2, 0.9], [0.8, 0.1], [0.5, 0.5]])})
    assert agg.recruit(signals, (0, 1), 1) == [(1,), (0,), (0,)]


@pytest.mark.skipif(not default_pool_dir().is_dir(), reason="the shared MMLU-Pro pool is not here")
def test_selector_beats_random_selection_on_a_pool_subset() -> None:
    pool = load_pool()
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(pool), 2400, replace=False))
    part = pool.subset(rows)
    # Competence and profile from the training rows' answers, without the sentence encoder (kept fast):
    # random features stand in for embeddings, so what the selector learns is agreement and profiles.
    embeddings = rng.normal(size=(len(part), 8))
    signals = agg.build_signals(part, embeddings)
    small = tuple(
        part.models.index(name) for name in ("Meta-Llama-3_1-8B-Instruct", "mathstral-7B", "Phi-3-mini-4k-instruct")
    )
    selector = agg.Selector("logistic").fit(signals["train"], [small])
    test = signals["test"]
    selected = agg.replay_selection("s", test, selector, [small] * len(test))
    # Random selection: each question's answers picked uniformly, in expectation.
    random_accuracy = test.correct[:, small].mean()
    assert selected.correct.mean() > random_accuracy + 0.03
    assert selected.cost == pytest.approx(test.cost[:, small].sum(axis=1))
