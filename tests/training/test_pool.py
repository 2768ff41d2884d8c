"""The MMLU-Pro pool loader reproduces the pool README's reference figures on the test split."""

from __future__ import annotations

import numpy as np
import pytest

from training.pool import (
    POOL_DIR_ENV,
    SPLITS,
    default_pool_dir,
    load_pool,
    prompt_chars,
    prompt_text,
    tokens_estimate,
)

pytestmark = pytest.mark.skipif(not default_pool_dir().is_dir(), reason="the shared MMLU-Pro pool is not here")

# README.md of the pool: accuracy and USD per 1k queries on the test split.
REFERENCE = {
    "Meta-Llama-3_1-70B-Instruct": (0.6173, 0.2460),
    "Qwen1.5-72B-Chat": (0.4598, 0.2565),
    "Meta-Llama-3_1-8B-Instruct": (0.4399, 0.0721),
    "mathstral-7B": (0.4183, 0.0555),
    "Mixtral-8x7B-Instruct-v0.1": (0.4117, 0.1509),
    "Yi-34B": (0.4042, 0.1866),
    "Phi-3-mini-4k-instruct": (0.3951, 0.0259),
}


def test_shapes_and_splits() -> None:
    pool = load_pool()
    assert len(pool) == 12_032
    assert set(pool.models) == set(REFERENCE)
    assert pool.correct.shape == pool.cost.shape == (len(pool), len(pool.models))
    assert len(set(pool.categories)) == 14
    assert {split: int(pool.mask(split).sum()) for split in SPLITS} == {"train": 7213, "dev": 2407, "test": 2412}
    assert (pool.cost > 0).all()


def test_reference_table_on_test_split() -> None:
    test = load_pool().of_split("test")
    accuracy, cost = test.accuracy(), test.cost_per_1k()
    assert {m: (round(accuracy[m], 4), round(cost[m], 4)) for m in test.models} == REFERENCE


def test_oracle_reference() -> None:
    test = load_pool().of_split("test")
    rows, chosen = np.arange(len(test)), test.oracle_choice()
    assert round(float(test.correct[rows, chosen].mean()), 4) == 0.8197
    assert round(float(test.cost[rows, chosen].mean() * 1000), 4) == 0.0664


def test_prompt_is_question_then_options_joined_by_newlines() -> None:
    assert prompt_chars("Q?", ["a", "bb"]) == len("Q?a\nbb")


def test_routers_see_the_stem_then_lettered_options() -> None:
    assert prompt_text("Q?", ["a", "bb"]) == "Q?\n(A) a\n(B) bb"
    pool = load_pool()
    row = 5
    lines = pool.prompts[row].split("\n(")
    assert lines[0] == pool.questions[row] and len(lines) == 1 + len(pool.options[row])
    assert lines[-1] == f"{chr(ord('A') + len(pool.options[row]) - 1)}) {pool.options[row][-1]}"


def test_parsed_once_and_read_only() -> None:
    pool = load_pool()
    assert load_pool(default_pool_dir()) is pool
    with pytest.raises(ValueError):
        pool.correct[0, 0] = not pool.correct[0, 0]


def test_pool_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(POOL_DIR_ENV, str(tmp_path))
    assert default_pool_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=POOL_DIR_ENV):
        load_pool()


def test_capped_answers_keep_only_choices_named_within_the_limit() -> None:
    pool = load_pool()
    capped = pool.capped(300)
    assert capped.answer_tokens.max() == 300
    long = pool.answer_tokens > 300
    kept = pool.committed_tokens <= 300
    # Answers within the limit are untouched; a cut one keeps its choice only if it had named it by then.
    assert np.array_equal(capped.pred[~long], pool.pred[~long]) and np.array_equal(capped.cost[~long], pool.cost[~long])
    assert np.array_equal(capped.pred[long & kept], pool.pred[long & kept])
    assert not capped.pred[long & ~kept].any() and not capped.correct[long & ~kept].any()
    assert (long & kept).any() and (long & ~kept).any()
    # A cut answer costs its prompt plus the limit.
    prompt = np.array([tokens_estimate(prompt_chars(q, list(o))) for q, o in zip(pool.questions, pool.options, strict=True)])
    assert np.allclose(capped.cost[long], (pool.prices * (prompt[:, None] + 300) / 1e6)[long])
    assert capped.correct.mean() < pool.correct.mean()
