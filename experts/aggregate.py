"""Combining several experts' answers to one question into one answer.

Shared by the offline replays (training/aggregation.py on the MMLU-Pro pool, training/cascade.py on any
data with recorded answers) and the live gateway, so both extract, compare, vote and select the same way.
Pure Python and numpy: nothing heavy is imported here.

- `extract_choice`: the option letter an answer text commits to (MMLU-Pro's own extraction rules).
- `final_answer`, `normalise_answer`: a free-form answer (a number, a short string, code output) read from
  a whole reply and put in one canonical form, so that equal answers written differently compare equal;
  `read_answer` is what a vote or a cascade compares: the choice, or the normalised free-form answer.
- `weighted_vote`: the letter with the largest total weight among the experts that chose it.
- `expert_weights`, `pick_answer`, `answers_needed`: the gateway's live vote and agreement cascade.
- `selection_features`: one row per candidate answer, for a trained selector (MetaQA-style) that
  scores each (question, answer) pair for correctness; the gateway picks the best-scored answer.
- `synthesis_messages`: the conversation an aggregator expert answers to combine free-text answers.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

AnswerKind = Literal["choice", "free-form"]

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


def read_answer(text: str | None, kind: AnswerKind = "choice", n_options: int = len(LETTERS)) -> str | None:
    """What agreement and votes compare: the option letter (`choice`) or the normalised final answer."""
    return extract_choice(text, n_options) if kind == "choice" else normalise_answer(final_answer(text))


# Final answers in a whole reply, tried in this order: a JSON object's `answer` (ZeroEval's protocol), the last
# \boxed{...}, the last "answer is X" / "Answer: X", the last number, the last line.
_ANSWER_PHRASE = re.compile(r"answer(?: is|:)\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")


def final_answer(text: str | None) -> str | None:
    """The final answer a live expert's reply commits to, as written (None for an empty reply)."""
    if not text or not text.strip():
        return None
    start, end = text.find("{"), text.rfind("}")  # the outermost braces: the reply's JSON object, if it is one
    if 0 <= start < end:
        try:
            reply = json.loads(text[start : end + 1])
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            reply = None
        if isinstance(reply, dict) and reply.get("answer") is not None:
            return str(reply["answer"])
    if (boxed := _last_boxed(text)) is not None:
        return boxed
    if phrases := _ANSWER_PHRASE.findall(text):
        return phrases[-1].removesuffix(".")  # the sentence's full stop ("The answer is 3.5.")
    if numbers := _NUMBER.findall(text):
        return numbers[-1]
    return text.strip().splitlines()[-1]


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced (LaTeX nests them: \\boxed{\\frac{1}{2}})."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[begin:i]
    return text[begin:]  # unclosed (a cut answer): what there is


_LATEX_FRACTION = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_MATH_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("\\text{", "}"), ("\\mathrm{", "}"))
_QUOTES = ("'", '"', "`")
_LETTER_IN_PARENTHESES = re.compile(r"^\(([a-j])\)$")  # "(B)", as "The answer is (B)" writes a choice
EMPTY_ANSWER = '""'
LITERAL_MAX_CHARS = 2000  # code output longer than this is compared as text, not parsed


def normalise_answer(text: str | None) -> str | None:
    """One canonical string per answer, so that equal answers written differently compare equal.

    Numbers (with `$`, `%`, thousands commas, fractions `a/b` or `\\frac{a}{b}`) become their value rounded to
    6 decimals ("$1,200.00" and "1200" are both "1200"); code output that is a Python literal is re-written the
    one way Python writes it ("[1,2]" and "[1, 2]" agree; a quoted string is its content); anything else is
    compared without case, outer quotes or repeated whitespace. The empty string is an answer too (code can print
    nothing), written `EMPTY_ANSWER`: "" stays what it is everywhere here, no answer. Option letters stay letters
    ("(B)" is "b"). None only for None.
    """
    if text is None:
        return None
    answer = text.strip()
    if (boxed := _last_boxed(answer)) is not None:
        answer = boxed.strip()
    answer = _unwrapped(answer)
    if (value := _number(answer)) is not None:
        return _canonical_number(value)
    if len(answer) <= LITERAL_MAX_CHARS:
        try:
            with warnings.catch_warnings():  # "3x" is an invalid decimal literal to Python, an answer to us
                warnings.simplefilter("ignore", SyntaxWarning)
                literal = ast.literal_eval(answer)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        else:
            answer = literal if isinstance(literal, str) else repr(literal)
    answer = " ".join(answer.split()).lower()
    while len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in _QUOTES:
        answer = answer[1:-1].strip()
    if letter := _LETTER_IN_PARENTHESES.match(answer):
        answer = letter.group(1)
    return answer or EMPTY_ANSWER


def _unwrapped(answer: str) -> str:
    """`answer` without the LaTeX math delimiters or text macros around it."""
    changed = True
    while changed:
        changed = False
        for opening, closing in _MATH_WRAPPERS:
            if len(answer) > len(opening) + len(closing) and answer.startswith(opening) and answer.endswith(closing):
                answer, changed = answer[len(opening) : -len(closing)].strip(), True
    return answer


def _number(answer: str) -> float | None:
    """The value of an answer that is one number (currency, percent, thousands separators, a fraction)."""
    bare = answer.replace("\\$", "").replace("$", "").replace("\\%", "").removesuffix("%").replace("\\!", "").strip()
    if _THOUSANDS.match(bare):
        bare = bare.replace(",", "")
    if fraction := _LATEX_FRACTION.match(bare):
        bare = f"{fraction.group(1)}{fraction.group(2)}/{fraction.group(3)}"
    numerator, slash, denominator = bare.partition("/")
    try:
        if not slash:
            return float(bare) if _PLAIN_NUMBER.match(bare) else None
        if _PLAIN_NUMBER.match(numerator.strip().lstrip("-")) and _PLAIN_NUMBER.match(denominator.strip()):
            value = float(numerator) / float(denominator)
            return value if math.isfinite(value) else None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _canonical_number(value: float) -> str:
    rounded = round(value, 6) + 0.0  # + 0.0: -0.0 reads as 0
    return str(int(rounded)) if rounded.is_integer() and abs(rounded) < 1e16 else repr(rounded)


def log_odds_weight(accuracy: float, n_options: int = len(LETTERS)) -> float:
    """Vote weight of an expert right with probability `accuracy`, wrong answers spread over the rest.

    The optimal weight under that model is log(accuracy * (K - 1) / (1 - accuracy)): an expert right
    40% of the time on ten options still votes with positive weight, unlike a plain logit.
    """
    accuracy = min(max(accuracy, 1e-3), 1 - 1e-3)
    return math.log(accuracy * (n_options - 1) / (1 - accuracy))


def weighted_vote(choices: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """The choice (a letter, or a normalised answer) with the largest summed weight; ties go to the one named
    first; None if no choice."""
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


def pick_answer(
    texts: Sequence[str], weights: Sequence[float], n_options: int = len(LETTERS), kind: AnswerKind = "choice"
) -> int:
    """The index of the answer a vote returns: the heaviest one naming the weighted-majority choice (with
    `kind` free-form: the weighted-majority normalised final answer).

    `texts` come best-ranked first. Among equal weights the earlier answer counts as the heavier, so a
    tie between choices goes to the heaviest (then best-ranked) answer's choice. When no answer names
    a choice, the best-ranked answer (index 0).
    """
    order = sorted(range(len(texts)), key=lambda i: -weights[i])  # stable: equal weights keep the ranking
    choices = [read_answer(texts[i], kind, n_options) for i in order]
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
