"""experts/aggregate.py's free-form answers: the final answer read from a whole reply, and one canonical form
per answer, so that agreement and votes compare numbers, short strings and code output as well as letters."""

from __future__ import annotations

import pytest

from experts.aggregate import (
    EMPTY_ANSWER,
    final_answer,
    normalise_answer,
    pick_answer,
    read_answer,
    weighted_vote,
)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("$1,200.00", "1200"),
        ("1200", "1200"),
        ("\\$1,200", "1200"),
        ("18%", "18"),
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("-\\dfrac{1}{2}", "-0.5"),
        ("$\\frac{1}{2}$", "0.5"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("-0", "0"),
        ("3.14159265", "3.141593"),
        ("5.", "5"),
        ("'GENERAL NAGOOR'", "general nagoor"),
        ("general   nagoor", "general nagoor"),
        ('"abc"', "abc"),
        ("[1,2]", "[1, 2]"),
        ("{'a':1}", "{'a': 1}"),
        ("True", "true"),
        ("A", "a"),
        ("(B)", "b"),
        ("''", EMPTY_ANSWER),
        ("", EMPTY_ANSWER),
        ("\\text{Monday}", "monday"),
    ],
)
def test_answers_written_differently_have_one_canonical_form(written: str, canonical: str) -> None:
    assert normalise_answer(written) == canonical


def test_different_answers_stay_different() -> None:
    different = ["[12, 3]", "[1, 23]", "1,2,3", "123", "1/3", "0.33", "'a  b'", "ab", "x = 5", "5"]
    assert len({normalise_answer(text) for text in different}) == len(different)
    assert normalise_answer(None) is None


def test_odd_text_never_raises() -> None:
    for text in ["1e400", "1/0", "[" * 5000, "9" * 5000, "3x", "\\frac{1}{0}", "$", "\\boxed{unclosed"]:
        assert isinstance(normalise_answer(text), str)
    assert normalise_answer("1/0") == "1/0"  # no value: compared as written
    assert final_answer('{"a": ' * 100_000 + "1" + "}" * 100_000) == "1"  # past JSON's depth: the last number


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ('{"reasoning_steps": ["16 - 3 - 4 = 9", "9 * 2 = 18"], "answer": "$18"}', "$18"),
        ('```json\n{"answer": 42}\n```', "42"),
        ("We simplify: \\boxed{\\frac{1}{2}}, done.", "\\frac{1}{2}"),
        ("Step one.\nThe answer is 3.5.\nThanks!", "3.5"),
        ("Answer: 'hello'", "'hello'"),
        ("So 3 apples and 5 pears: 8 fruit", "8"),
        ("It prints\nhello world", "hello world"),
        ("", None),
        ("   ", None),
    ],
)
def test_the_final_answer_is_read_from_a_whole_reply(reply: str, answer: str | None) -> None:
    assert final_answer(reply) == answer


def test_read_answer_compares_letters_or_free_form_answers() -> None:
    assert read_answer("The answer is (C).") == "C"
    assert read_answer("The answer is 1,200.") is None  # a choice, or nothing
    assert read_answer("The answer is 1,200.", "free-form") == read_answer('{"answer": "1200"}', "free-form")
    assert read_answer("The answer is (C).", "free-form") == "c"


def test_pick_answer_votes_on_free_form_answers() -> None:
    texts = ["The answer is 7.", '{"answer": "8"}', "so \\boxed{8}"]
    assert pick_answer(texts, [1.0, 1.0, 1.0], kind="free-form") == 1  # 8 twice; the earlier of them
    assert pick_answer(texts, [3.0, 1.0, 1.0], kind="free-form") == 0  # 7 outweighs both
    assert pick_answer(texts, [1.0, 1.0, 1.0]) == 0  # as choices none names one: the best-ranked


def test_the_empty_answer_votes_while_no_answer_does_not() -> None:
    assert weighted_vote([normalise_answer("''"), None, ""], [1.0, 5.0, 5.0]) == EMPTY_ANSWER
