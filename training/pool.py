"""The shared MMLU-Pro expert pool: questions, seven models' recorded answers, prices and fixed splits.

See the pool's README.md. Costs follow its reference table exactly: tokens = ceil(chars / 4) of the
prompt (the question followed directly by its options joined with newlines) plus ceil(chars / 4)
of the model's generated answer, at the model's price per 1M tokens. Parsed pools are kept in memory.

`Pool.capped` replays the answers as if each had been cut at a token limit (max_tokens): the answer
text is not kept, only its length and where it committed to its choice.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from string import ascii_uppercase

import numpy as np

from experts.aggregate import ANSWER_IS
from routers.dataset import SPLITS

POOL_DIR_ENV = "MOE_POOL_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def default_pool_dir() -> Path:
    return Path(os.environ.get(POOL_DIR_ENV) or _REPO_ROOT.parent / "shared" / "data" / "mmlu_pro_pool")


def prompt_chars(question: str, options: list[str]) -> int:
    """Characters of the prompt as the pool prices it (reproduces the README's reference costs)."""
    return len(question) + len("\n".join(options))


def prompt_text(question: str, options: Sequence[str]) -> str:
    """The question as a user sends it to the gateway: the stem, then one lettered line per option."""
    lines = (f"({letter}) {option}" for letter, option in zip(ascii_uppercase, options, strict=False))
    return "\n".join([question, *lines])


def tokens_estimate(chars: int) -> int:
    return math.ceil(chars / 4)


@dataclass(frozen=True)
class Pool:
    """One row per question, one column per model; arrays are read-only views meant to be sliced."""

    question_ids: np.ndarray  # int64 [n]
    questions: np.ndarray  # str [n]: the question stem
    options: tuple[tuple[str, ...], ...]
    categories: np.ndarray  # str [n]: the 14 MMLU-Pro categories
    src: np.ndarray  # str [n]: origin subject, e.g. ori_mmlu-high_school_physics
    models: tuple[str, ...]
    prices: np.ndarray  # float [m]: USD per 1M tokens
    correct: np.ndarray  # bool [n, m]
    cost: np.ndarray  # float [n, m]: USD for that model to answer that question
    split: np.ndarray  # str [n]: train / dev / test
    pred: np.ndarray  # str [n, m]: each model's extracted answer letter, "" where none was extracted
    answer_tokens: np.ndarray  # int [n, m]: tokens of each answer (ceil(chars / 4))
    committed_tokens: np.ndarray  # int [n, m]: tokens of the answer up to where it named `pred` (see `capped`)

    def __len__(self) -> int:
        return len(self.question_ids)

    def mask(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
        return self.split == split

    def subset(self, rows: np.ndarray) -> Pool:
        """The pool restricted to `rows` (a boolean mask or integer indices)."""
        indices = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        return Pool(
            question_ids=self.question_ids[indices],
            questions=self.questions[indices],
            options=tuple(self.options[i] for i in indices),
            categories=self.categories[indices],
            src=self.src[indices],
            models=self.models,
            prices=self.prices,
            correct=self.correct[indices],
            cost=self.cost[indices],
            split=self.split[indices],
            pred=self.pred[indices],
            answer_tokens=self.answer_tokens[indices],
            committed_tokens=self.committed_tokens[indices],
        )

    def capped(self, max_tokens: int) -> Pool:
        """The pool as if every answer had been cut at `max_tokens`: a cut answer keeps its choice only if it
        had named it by then (its first "answer is (X)"), else it names none and is wrong; it costs the tokens
        it got to. Answers within the limit are unchanged."""
        kept = self.committed_tokens <= max_tokens
        cut = np.minimum(self.answer_tokens, max_tokens)
        return dataclasses.replace(
            self,
            pred=np.where(kept, self.pred, ""),
            correct=self.correct & kept,
            cost=self.cost - self.prices * (self.answer_tokens - cut) / 1e6,
            answer_tokens=cut,
            committed_tokens=np.where(kept, self.committed_tokens, np.iinfo(np.int64).max),
        )

    @cached_property
    def prompts(self) -> np.ndarray:
        """str [n]: stem and options (`prompt_text`), what routers train on: the options tell a calculation
        from a recall question, which the stem alone often does not (dev accuracy of a plain per-expert
        logistic router over the three small experts: 0.452 against 0.436 on the stem)."""
        return np.array([prompt_text(q, o) for q, o in zip(self.questions, self.options, strict=True)], dtype=object)

    def of_split(self, split: str) -> Pool:
        return self.subset(self.mask(split))

    def accuracy(self) -> dict[str, float]:
        return dict(zip(self.models, self.correct.mean(axis=0).tolist(), strict=True))

    def cost_per_1k(self) -> dict[str, float]:
        return dict(zip(self.models, (self.cost.mean(axis=0) * 1000).tolist(), strict=True))

    def oracle_choice(self) -> np.ndarray:
        """Per question, the model index of the cheapest right answer (the cheapest answer if none is right)."""
        cheapest_right = np.argmin(np.where(self.correct, self.cost, np.inf), axis=1)
        return np.where(self.correct.any(axis=1), cheapest_right, np.argmin(self.cost, axis=1))


def load_pool(pool_dir: Path | str | None = None) -> Pool:
    """Parse the pool once per process and directory; later calls return the same object."""
    return _load(Path(pool_dir or default_pool_dir()).resolve())


@cache
def _load(pool_dir: Path) -> Pool:
    if not (pool_dir / "questions.jsonl.gz").is_file():
        raise FileNotFoundError(f"no MMLU-Pro pool at {pool_dir} (set {POOL_DIR_ENV} or pass --pool-dir)")
    rows = _read_jsonl(pool_dir / "questions.jsonl.gz")
    ids = np.array([row["question_id"] for row in rows], dtype=np.int64)
    position = {int(qid): i for i, qid in enumerate(ids)}
    prompt_tokens = np.array([tokens_estimate(prompt_chars(r["question"], r["options"])) for r in rows])

    catalogue = json.loads((pool_dir / "models.json").read_text())["models"]
    models = tuple(m["name"] for m in catalogue)
    prices = np.array([m["price_per_mtok"] for m in catalogue], dtype=np.float64)
    correct = np.zeros((len(rows), len(models)), dtype=bool)
    answer_tokens = np.zeros((len(rows), len(models)), dtype=np.int64)
    committed_tokens = np.full((len(rows), len(models)), np.iinfo(np.int64).max, dtype=np.int64)
    pred = np.full((len(rows), len(models)), "", dtype="<U1")
    for j, model in enumerate(models):
        answered = np.zeros(len(rows), dtype=bool)
        for response in _read_jsonl(pool_dir / "responses" / f"{model}.jsonl.gz"):
            i = position[response["question_id"]]
            answered[i] = True
            correct[i, j] = response["correct"]
            pred[i, j] = response["pred"] or ""
            text = response["generated_text"] or ""
            answer_tokens[i, j] = tokens_estimate(len(text))
            if pred[i, j]:
                committed_tokens[i, j] = tokens_estimate(_committed_chars(text, pred[i, j]))
        if not answered.all():
            raise ValueError(f"{model} has no response for {int((~answered).sum())} questions")

    split = np.full(len(rows), "", dtype=object)
    for name, split_ids in json.loads((pool_dir / "splits.json").read_text()).items():
        split[[position[qid] for qid in split_ids]] = name

    pool = Pool(
        question_ids=ids,
        questions=np.array([r["question"] for r in rows], dtype=object),
        options=tuple(tuple(r["options"]) for r in rows),
        categories=np.array([r["category"] for r in rows], dtype=object),
        src=np.array([r["src"] for r in rows], dtype=object),
        models=models,
        prices=prices,
        correct=correct,
        cost=prices * (prompt_tokens[:, None] + answer_tokens) / 1e6,
        split=split.astype(str),
        pred=pred,
        answer_tokens=answer_tokens,
        committed_tokens=committed_tokens,
    )
    for array in vars(pool).values():
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # the cached pool is shared by every caller
    return pool


def _committed_chars(text: str, pred: str) -> int:
    """Characters of `text` up to the end of its first "answer is (X)" naming `pred`; the whole text when the
    recorded choice came from a later rule (MMLU-Pro's script reads the last "Answer: X", else guesses)."""
    match = ANSWER_IS.search(text)
    return match.end() if match and match.group(1) == pred else len(text)


def _read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
