"""Combining several experts' answers to one multiple-choice question into one choice.

Shared by the offline replay on the MMLU-Pro pool (training/aggregation.py) and the live gateway, so
both extract, vote and select the same way. Pure Python and numpy: nothing heavy is imported here.

- `extract_choice`: the option letter an answer text commits to (MMLU-Pro's own extraction rules).
- `weighted_vote`: the letter with the largest total weight among the experts that chose it.
- `selection_features`: one row per candidate answer, for a trained selector (MetaQA-style) that
  scores each (question, answer) pair for correctness; the gateway picks the best-scored answer.
- `synthesis_messages`: the conversation an aggregator expert answers to combine free-text answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"
# MMLU-Pro's evaluation script: the first "answer is (X)", else the last "Answer: X". The pool's
# recorded `pred` follows the first rule; a bare letter elsewhere in the text is not an answer.
_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
_ANSWER_COLON = re.compile(r".*[aA]nswer:\s*\(?([A-J])\)?", re.DOTALL)


def extract_choice(text: str | None, n_options: int = len(LETTERS)) -> str | None:
    """The letter the answer commits to, or None when it names none (or one beyond its options)."""
    if not text:
        return None
    match = _ANSWER_IS.search(text) or _ANSWER_COLON.match(text)
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
