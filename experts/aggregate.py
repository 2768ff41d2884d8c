"""Combining several experts' answers to one multiple-choice question into one choice.

Shared by the offline replay on the MMLU-Pro pool (training/aggregation.py) and the live gateway, so
both extract, vote and select the same way. Pure Python and numpy: nothing heavy is imported here.

- `extract_choice`: the option letter an answer text commits to (MMLU-Pro's own extraction rules).
- `weighted_vote`: the letter with the largest total weight among the experts that chose it.
- `expert_weights`, `pick_answer`, `answers_needed`: the gateway's live vote and agreement cascade.
- `selection_features`: one row per candidate answer, for a trained selector (MetaQA-style) that
  scores each (question, answer) pair for correctness; the gateway picks the best-scored answer.
- `synthesis_messages`: the conversation an aggregator expert answers to combine free-text answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"
# MMLU-Pro's evaluation script: the first "answer is (X)", else the last "Answer: X". The pool's
# recorded `pred` follows the first rule; a bare letter elsewhere in the text is not an answer.
ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
_ANSWER_COLON = re.compile(r".*[aA]nswer:\s*\(?([A-J])\)?", re.DOTALL)


def extract_choice(text: str | None, n_options: int = len(LETTERS)) -> str | None:
    """The letter the answer commits to, or None when it names none (or one beyond its options)."""
    if not text:
        return None
    match = ANSWER_IS.search(text) or _ANSWER_COLON.match(text)
    if match is None or LETTERS.index(match.group(1)) >= n_options:
        return None
    return match.group(1)


def log_odds_weight(accuracy: float, n_options: int = len(LETTERS)) -> float:
    """Vote weight of an expert right with probability `accuracy`, wrong answers spread over the rest.

    The optimal weight under that model is log(accuracy * (K - 1) / (1 - accuracy)): an expert right
    40% of the time on ten options still votes with positive weight, unlike a plain logit.
    """
    accuracy = min(max(accuracy, 1e-3), 1 - 1e-3)
    return math.log(accuracy * (n_options - 1) / (1 - accuracy))


def weighted_vote(choices: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The letter with the largest summed weight; ties go to the letter named first; None if no choice."""
    totals: dict[str, float] = {}
    for choice, weight in zip(choices, weights, strict=True):
        if choice:
            totals[choice] = totals.get(choice, 0.0) + weight
    if not totals:
        return None
    return max(totals, key=totals.__getitem__)  # max keeps the first of equal totals


def expert_weights(experts: Sequence[str], accuracy: Mapping[str, float], n_options: int = len(LETTERS)) -> list[float]:
    """Each expert's vote weight: the log-odds of its dev accuracy. An expert with no accuracy on record
    votes as an average listed one (the mean of their weights); with none on record all weigh 1."""
    known = {name: log_odds_weight(value, n_options) for name, value in accuracy.items()}
    average = sum(known.values()) / len(known) if known else 1.0
    return [known.get(name, average) for name in experts]


def pick_answer(texts: Sequence[str], weights: Sequence[float], n_options: int = len(LETTERS)) -> int:
    """The index of the answer a vote returns: the heaviest one naming the weighted-majority choice.

    `texts` come best-ranked first. Among equal weights the earlier answer counts as the heavier, so a
    tie between choices goes to the heaviest (then best-ranked) answer's choice. When no answer names
    a choice, the best-ranked answer (index 0).
    """
    order = sorted(range(len(texts)), key=lambda i: -weights[i])  # stable: equal weights keep the ranking
    choices = [extract_choice(texts[i], n_options) for i in order]
    winner = weighted_vote(choices, [weights[i] for i in order])
    return 0 if winner is None else order[choices.index(winner)]


def answers_needed(choices: Sequence[str | None], agree: int) -> int:
    """How many more answers could at best bring `agree` of them to one choice (0: they already agree)."""
    most = max(Counter(choice for choice in choices if choice).values(), default=0)
    return max(agree - most, 0)


# Column layout of `selection_features`, after one indicator column per expert.
CANDIDATE_FEATURES = (
    "competence",  # the expert's predicted p(correct) on this question (question embedding -> expert)
    "profile",  # the expert's accuracy on this question's category (training split)
    "supporters",  # share of the other called experts that chose the same letter
    "support_competence",  # summed competence of the others that chose the same letter
    "rival_competence",  # summed competence of the others that chose another letter
    "vote_margin",  # this letter's vote weight minus the best other letter's
    "n_called",
)


def selection_features(
    experts: Sequence[int],
    choices: Sequence[str | None],
    competence: np.ndarray,
    profile: np.ndarray,
    weights: np.ndarray,
    n_experts: int,
) -> tuple[np.ndarray, list[int]]:
    """Feature rows for the answers of the called `experts` (indices into the full expert list).

    `competence`, `profile` and `weights` are per expert of the full list ([n_experts]) for this
    question. Returns the rows ([candidates, n_experts + len(CANDIDATE_FEATURES)]) and, for each
    row, the position in `experts` of the answer it describes; answers without a choice get no row.
    """
    called = len(experts)
    letter_weight: dict[str, float] = {}
    for expert, choice in zip(experts, choices, strict=True):
        if choice:
            letter_weight[choice] = letter_weight.get(choice, 0.0) + weights[expert]
    rows, positions = [], []
    for position, (expert, choice) in enumerate(zip(experts, choices, strict=True)):
        if not choice:
            continue
        others = [(e, c) for e, c in zip(experts, choices, strict=True) if e != expert]
        same = [e for e, c in others if c == choice]
        rival = [e for e, c in others if c and c != choice]
        best_rival = max((w for letter, w in letter_weight.items() if letter != choice), default=0.0)
        indicator = np.zeros(n_experts)
        indicator[expert] = 1.0
        rows.append(
            np.concatenate(
                [
                    indicator,
                    [
                        competence[expert],
                        profile[expert],
                        len(same) / max(called - 1, 1),
                        competence[same].sum(),
                        competence[rival].sum(),
                        letter_weight[choice] - best_rival,
                        called,
                    ],
                ]
            )
        )
        positions.append(position)
    return np.array(rows).reshape(len(rows), n_experts + len(CANDIDATE_FEATURES)), positions


# The aggregation prompt of Mixture-of-Agents, which Symbolic-MoE's aggregator also follows.
SYNTHESIS_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. Critically evaluate "
    "the information provided in these responses, recognizing that some of it may be biased or incorrect. "
    "Your response should not simply replicate the given answers but should offer a refined, accurate, and "
    "comprehensive reply to the instruction.\n\nResponses from models:"
)


def synthesis_messages(
    messages: Sequence[Mapping[str, Any]], answers: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The client's conversation with the experts' (name, answer) pairs put in its system message.

    One leading system message, merged with the client's own if it has one: many chat templates
    accept only one.
    """
    listed = "\n".join(f"{i}. {answer}" for i, (_, answer) in enumerate(answers, start=1))
    prompt = f"{SYNTHESIS_PROMPT}\n{listed}"
    first = messages[0] if messages else None
    if first and first["role"] in ("system", "developer") and isinstance(first["content"], str):
        return [{"role": "system", "content": f"{first['content']}\n\n{prompt}"}, *map(dict, messages[1:])]
    return [{"role": "system", "content": prompt}, *map(dict, messages)]
