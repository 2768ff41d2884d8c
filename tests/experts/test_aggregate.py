"""experts/aggregate.py: the gateway's live vote and cascade, and the synthesis prompt (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experts.aggregate import (
    CANDIDATE_FEATURES,
    SYNTHESIS_PROMPT,
    answers_needed,
    expert_weights,
    extract_choice,
    log_odds_weight,
    pick_answer,
    selection_features,
    synthesis_messages,
    weighted_vote,
)


def test_letters_are_judged_against_the_number_of_options() -> None:
    assert extract_choice("The answer is (J).") == "J"  # ten options by default
    assert extract_choice("The answer is (C).", n_options=3) == "C"
    assert extract_choice("The answer is (D).", n_options=3) is None
    assert extract_choice("The answer is (A).", n_options=1) == "A"


def test_log_odds_weight_stays_finite_at_the_extremes() -> None:
    sure, hopeless = log_odds_weight(1.0), log_odds_weight(0.0)
    assert sure == pytest.approx(math.log(0.999 * 9 / 0.001))
    assert hopeless == pytest.approx(math.log(0.001 * 9 / 0.999))
    assert log_odds_weight(0.75, n_options=4) == pytest.approx(math.log(0.75 * 3 / 0.25))


def test_weighted_vote_sums_from_zero_and_refuses_misaligned_inputs() -> None:
    assert weighted_vote(["A", "B", "B"], [0.5, 0.3, 0.3]) == "B"  # 0.6 beats 0.5
    assert weighted_vote(["A", "B"], [0.5, 0.5 + 1e-9]) == "B"
    with pytest.raises(ValueError):
        weighted_vote(["A", "B"], [1.0])


def test_expert_weights_default_to_the_average_listed_expert() -> None:
    accuracy = {"stem": 0.6, "general": 0.3}
    weights = expert_weights(["general", "unknown", "stem"], accuracy)
    assert weights[0] == pytest.approx(log_odds_weight(0.3)) and weights[2] == pytest.approx(log_odds_weight(0.6))
    assert weights[1] == pytest.approx((log_odds_weight(0.6) + log_odds_weight(0.3)) / 2)
    assert expert_weights(["a", "b"], {}) == [1.0, 1.0]
    assert expert_weights(["a"], {"a": 0.75}, n_options=4) == [pytest.approx(math.log(0.75 * 3 / 0.25))]


def test_pick_answer_returns_the_heaviest_answer_naming_the_majority_choice() -> None:
    texts = ["The answer is (A).", "The answer is (B).", "Answer: B", "no idea"]
    # B's two answers outweigh A's one; of B's, the heavier (index 2) is returned.
    assert pick_answer(texts, [1.0, 0.6, 0.7, 5.0]) == 2
    # A alone outweighs B's two.
    assert pick_answer(texts, [2.0, 0.6, 0.7, 5.0]) == 0
    # Equal weights: the better-ranked (earlier) of B's answers.
    assert pick_answer(texts, [1.0, 1.0, 1.0, 1.0]) == 1
    # A tie between choices goes to the heaviest answer's choice, then to the better-ranked one.
    assert pick_answer(["The answer is (A).", "The answer is (B)."], [1.0, 1.0]) == 0
    assert pick_answer(["The answer is (A).", "The answer is (B).", "Answer: A", "Answer: B"], [1, 3, 2, 0]) == 1
    # No answer names a choice: the best-ranked answer.
    assert pick_answer(["hmm", "no idea"], [1.0, 9.0]) == 0
    # A letter beyond the options is no choice.
    assert pick_answer(["The answer is (E).", "The answer is (B)."], [9.0, 1.0], n_options=4) == 1


def test_answers_needed_counts_towards_agreement() -> None:
    assert answers_needed([], 2) == 2
    assert answers_needed(["A"], 2) == 1
    assert answers_needed(["A", "B"], 2) == 1
    assert answers_needed(["A", "A"], 2) == 0
    assert answers_needed(["A", "A", "A"], 2) == 0  # never below zero
    assert answers_needed([None, "", "C"], 3) == 2  # answers without a choice count for nothing
    assert answers_needed(["A", "B", "B"], 3) == 1


def test_selection_features_by_hand_for_two_candidates() -> None:
    competence = np.array([0.7, 0.2, 0.4, 0.9])
    rows, positions = selection_features(
        experts=(0, 1, 2, 3), choices=["A", None, "B", "A"], competence=competence,
        profile=np.array([0.6, 0.1, 0.5, 0.8]), weights=np.array([2.0, 5.0, 1.0, 3.0]), n_experts=4,
    )
    assert positions == [0, 2, 3]  # the answer without a choice is skipped, the ones after it are not
    assert rows.shape == (3, 4 + len(CANDIDATE_FEATURES))
    named = [dict(zip(CANDIDATE_FEATURES, row[4:], strict=True)) for row in rows]
    assert named[0] == pytest.approx({"competence": 0.7, "profile": 0.6, "supporters": 1 / 3, "support_competence": 0.9,
                                      "rival_competence": 0.4, "vote_margin": 5.0 - 1.0, "n_called": 4})
    assert named[1] == pytest.approx({"competence": 0.4, "profile": 0.5, "supporters": 0.0, "support_competence": 0.0,
                                      "rival_competence": 1.6, "vote_margin": 1.0 - 5.0, "n_called": 4})
    assert rows[1, :4].tolist() == [0, 0, 1, 0]
    pair, _ = selection_features((0, 3), ["A", "A"], competence, competence, np.ones(4), 4)
    assert dict(zip(CANDIDATE_FEATURES, pair[0, 4:], strict=True))["supporters"] == 1.0  # the one other agrees
    lone, where = selection_features((2,), ["C"], competence, competence, np.ones(4), 4)
    assert where == [0] and dict(zip(CANDIDATE_FEATURES, lone[0, 4:], strict=True))["supporters"] == 0.0
    none, nowhere = selection_features((0, 1), [None, None], competence, competence, np.ones(4), 4)
    assert none.shape == (0, 4 + len(CANDIDATE_FEATURES)) and nowhere == []
    with pytest.raises(ValueError):
        selection_features((0, 1), ["A"], competence, competence, np.ones(4), 4)


def test_synthesis_puts_the_answers_in_one_leading_system_message() -> None:
    answers = [("stem", "It is 4."), ("general", "Four.")]
    listed = f"{SYNTHESIS_PROMPT}\n1. It is 4.\n2. Four."
    user = {"role": "user", "content": "What is 2 + 2?"}
    assert synthesis_messages([user], answers) == [{"role": "system", "content": listed}, user]
    for role in ("system", "developer"):
        merged = synthesis_messages([{"role": role, "content": "Be brief."}, user], answers)
        assert merged == [{"role": "system", "content": f"Be brief.\n\n{listed}"}, user]
    parts = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert synthesis_messages([parts, user], answers) == [{"role": "system", "content": listed}, parts, user]
    assert synthesis_messages([], answers) == [{"role": "system", "content": listed}]
    messages = [user]
    synthesis_messages(messages, answers)[1]["content"] = "changed"
    assert messages == [{"role": "user", "content": "What is 2 + 2?"}]  # the client's messages are copied, not changed
