"""`moe judge` against scripted experts whose replies the tests choose (garbage included), on SQLite and
PostgreSQL: ratings and verdicts parsed, position bias cancelled, feedback written once per decision and judge."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner, Result

from bench.upstream import serve_in_thread
from gateway.cli import app as cli
from gateway.migrate import upgrade
from migrations.schema import DecisionRow, FeedbackRow
from training.judge import Judgement, logged_share, parse_rating, parse_verdict, write_feedback

QUESTION = json.dumps([{"role": "user", "content": "What is the capital of France?"}])
# The rater's reply to each logged answer: the tests choose what a judge says.
RATER_REPLIES = {
    "Paris.": "Correct and to the point.\nRating: 9",
    "Lyon.": "Wrong city. [[2]]",
    "Marseille, I think.": "I cannot judge this one, sorry.",  # no rating: skipped
}


def _section(prompt: str, name: str) -> str:
    return prompt.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0]


async def _chat(request: Request) -> Response:
    body = await request.json()
    model, prompt = body["model"], body["messages"][-1]["content"]
    if model == "down":
        return JSONResponse({"error": {"message": "judge unavailable"}}, status_code=500)
    if model == "rater":
        reply = RATER_REPLIES[_section(prompt, "Answer")]
    elif model == "first-wins":  # position bias: whatever is shown first
        reply = "The first answer reads better.\nVerdict: A"
    elif model == "picks-paris":
        first, second = "Paris" in _section(prompt, "Answer A"), "Paris" in _section(prompt, "Answer B")
        reply = "Verdict: tie" if first == second else f"Verdict: {'A' if first else 'B'}"
    else:  # `paris`: the other expert of a pairwise run
        reply = "Paris."
    return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                      "finish_reason": "stop"}]})


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    with serve_in_thread(Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])) as base:
        yield f"{base}/v1"


@pytest.fixture
def env(scripted: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    names = ("rater", "first-wins", "picks-paris", "paris", "down")
    config.write_text(yaml.safe_dump({
        "experts": [{"name": name, "model": name, "api_base": scripted, "connect_retries": 0} for name in names],
        "routers": [{"name": "r", "artifact": "var/routers/x"}],
        "virtual_models": [{"name": "moe-auto", "router": "r"}],
    }))
    upgrade(database_url)
    return {"DATABASE_URL": database_url, "MOE_CONFIG": str(config)}


def _log(database_url: str, answers: dict[str, str | None], **overrides: object) -> None:
    """Decisions with the question and these answers (None: no text kept), made an hour ago."""
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        for decision_id, answer in answers.items():
            fields: dict[str, object] = dict(
                id=decision_id, created_at=datetime.now(UTC) - timedelta(hours=1), requested_model="moe-auto",
                virtual_model="moe-auto", request_hash="h" * 64, status="ok", http_status=200, ranked=[],
                recruited=[], stream=False, explored=False, chosen_expert="general",
                prompt=None if answer is None else QUESTION, answer=answer)
            session.add(DecisionRow(**{**fields, **overrides}))
    engine.dispose()


def _feedback(database_url: str) -> dict[tuple[str, str], FeedbackRow]:
    engine = create_engine(database_url)
    with Session(engine) as session:
        found = {(row.decision_id, row.source): row for row in session.scalars(select(FeedbackRow))}
    engine.dispose()
    return found


def judge(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["judge", *args], env=env)


def said(result: Result) -> str:
    """The output as one line of words, without the frame rich draws around an error."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_the_judges_ratings_become_feedback_and_a_rerun_judges_only_the_rest(env: dict[str, str],
                                                                            database_url: str) -> None:
    _log(database_url, {"right": "Paris.", "wrong": "Lyon.", "unsure": "Marseille, I think.", "untold": None})
    _log(database_url, {"unreadable": "Paris."}, prompt="not a list of messages")
    _log(database_url, {"old": "Paris."}, created_at=datetime.now(UTC) - timedelta(days=3))
    _log(database_url, {"failed": "Paris."}, http_status=502, status="error")
    result = judge(env, "--judge", "rater", "--last", "1d")
    assert result.exit_code == 0, result.output
    assert ("judge:rater: sampled 4, judged 2; skipped 1 unparseable replies, 0 failed calls, 1 unreadable prompts"
            in result.output)
    feedback = _feedback(database_url)
    assert set(feedback) == {("right", "judge:rater"), ("wrong", "judge:rater")}
    assert feedback["right", "judge:rater"].score == pytest.approx(8 / 9)
    assert feedback["wrong", "judge:rater"].score == pytest.approx(1 / 9)
    assert feedback["right", "judge:rater"].comment == "rated 9/10"

    again = judge(env, "--judge", "rater", "--last", "1d")  # only the two it could not judge are drawn again
    assert "sampled 2, judged 0; skipped 1 unparseable replies" in again.output and again.exit_code == 1
    assert _feedback(database_url).keys() == feedback.keys()


def test_a_judge_that_favours_the_first_answer_ends_at_a_tie(env: dict[str, str], database_url: str) -> None:
    _log(database_url, {"right": "Paris.", "wrong": "Lyon."})
    result = judge(env, "--judge", "first-wins", "--against", "paris")
    assert result.exit_code == 0, result.output
    feedback = _feedback(database_url)
    assert [feedback[d, "judge:first-wins"].score for d in ("right", "wrong")] == [0.5, 0.5]
    assert feedback["wrong", "judge:first-wins"].expert is None
    assert feedback["wrong", "judge:first-wins"].comment == "against paris: logged answer shown first A, second A"


def test_a_consistent_judge_names_the_expert_that_should_have_answered(env: dict[str, str], database_url: str) -> None:
    _log(database_url, {"right": "Paris.", "wrong": "Lyon."})
    result = judge(env, "--judge", "picks-paris", "--against", "paris", "--sample", "5")
    assert "sampled 2, judged 2" in result.output, result.output
    feedback = _feedback(database_url)
    wrong, right = feedback["wrong", "judge:picks-paris"], feedback["right", "judge:picks-paris"]
    assert (wrong.score, wrong.expert) == (0.0, "paris")  # it lost with either answer shown first
    assert (right.score, right.expert) == (0.5, None)  # the same answer twice: a tie


def test_failed_judge_calls_are_counted_and_nothing_is_written(env: dict[str, str], database_url: str) -> None:
    _log(database_url, {"right": "Paris."})
    result = judge(env, "--judge", "down")
    assert result.exit_code == 1 and "sampled 1, judged 0; skipped 0 unparseable replies, 1 failed calls" in result.output
    assert _feedback(database_url) == {}


@pytest.mark.parametrize(("args", "message"), [
    (["--judge", "nobody"], "not an expert of"),
    (["--judge", "rater", "--against", "nobody"], "not an expert of"),
    (["--judge", "rater", "--last", "yesterday"], "an age such as 30d"),
])
def test_bad_arguments_are_refused_in_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    result = judge(env, *args)
    assert result.exit_code == 2 and message in said(result) and "Traceback" not in result.output


def test_judging_again_replaces_the_judges_feedback_and_leaves_the_users(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.add(FeedbackRow(decision_id="d", source="user", score=1.0, created_at=now, updated_at=now))
    write_feedback(engine, "judge:rater", [Judgement("d", 0.25, None, "first")])
    write_feedback(engine, "judge:rater", [Judgement("d", 0.75, "paris", "second")])
    engine.dispose()
    feedback = _feedback(database_url)
    assert set(feedback) == {("d", "user"), ("d", "judge:rater")}
    assert (feedback["d", "judge:rater"].score, feedback["d", "judge:rater"].expert) == (0.75, "paris")
    assert feedback["d", "user"].score == 1.0


@pytest.mark.parametrize(("reply", "rating"), [
    ("Accurate.\nRating: 7", 7.0),
    ("The scale runs 1-10. Rating: 3\nOn reflection, Rating: **8**", 8.0),  # the last one given counts
    ("Rating: [[6]]", 6.0),
    ("Verdict [[4]]", 4.0),
    ("I'd give it 9/10.", 9.0),
    ("7", 7.0),
    ("rating: 7.5", 7.5),
    ("Rating: 11", None),
    ("Rating: 0", None),
    ("Rating: <number>", None),
    ("", None),
    ("garbage \x00 reply", None),
])
def test_ratings_are_read_robustly(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(("reply", "verdict"), [
    ("B explains why.\nVerdict: B", "B"),
    ("verdict: a", "A"),
    ("Verdict: TIE", "tie"),
    ("[[A]]", "A"),
    ("Verdict: A\nWait, no. Verdict: B", "B"),
    ("A", "A"),
    ("Both are fine", None),
    ("Verdict: C", None),
])
def test_verdicts_are_read_robustly(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(("shown_first", "shown_second", "share"), [
    ("A", "B", 1.0), ("B", "A", 0.0), ("A", "A", 0.5), ("B", "B", 0.5), ("tie", "tie", 0.5), ("A", "tie", 0.75),
])
def test_the_logged_answers_share_of_two_verdicts(shown_first: str, shown_second: str, share: float) -> None:
    assert logged_share(shown_first, shown_second) == share  # type: ignore[arg-type]


def test_a_judge_name_that_cannot_be_a_feedback_source_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    config = yaml.safe_load(Path(env["MOE_CONFIG"]).read_text())
    config["experts"].append({**config["experts"][0], "name": "x" * 60})
    Path(env["MOE_CONFIG"]).write_text(yaml.safe_dump(config))
    result = judge(env, "--judge", "x" * 60)
    assert result.exit_code == 2 and "cannot make a feedback source" in said(result)
