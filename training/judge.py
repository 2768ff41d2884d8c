"""`moe judge`: an expert named as judge scores logged (query, answer) pairs offline, written as feedback with the
source `judge:<expert>`, so that retraining learns from it as from users' feedback.

Pointwise, the judge rates the logged answer from 1 to 10 against a rubric (correctness first), mapped onto
feedback's 0-1. Pairwise (`--against EXPERT`), that expert answers the logged conversation too, and the judge says
which answer is better twice, each answer shown first once: a judge that favours a position says A both times and
ends at a tie, not a win (the position bias of LLM judges, Zheng et al. 2023, MT-Bench). The score is the logged
answer's share of the two verdicts; when the other expert wins both, the feedback names it as the one that should
have answered.

Only decisions that kept their text (a virtual model's `store_text`, or MOE_LOG_PROMPTS) can be judged; each
decision is judged once per judge (one feedback per decision and source, as POST /v1/feedback keeps it), so a
rerun judges only what it has not. A reply without a readable rating or verdict is skipped and counted.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console

from training.cli import DEFAULT_DATABASE_URL, DatabaseUrl

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from experts.client import ExpertClient

console = Console(stderr=True, soft_wrap=True)  # whole lines: a log or a test reads them
Verdict = Literal["A", "B", "tie"]
SOURCE = re.compile(r"^[a-z0-9_.:-]{1,50}$")  # what POST /v1/feedback accepts as a source

JUDGE_SYSTEM = "You are an impartial judge of the answers AI assistants give."
RUBRIC = """Judge the assistant's answer to the conversation below: its correctness first, then its helpfulness, \
relevance and clarity. Be objective; an answer's length is no merit in itself.

[Conversation]
{conversation}

[Answer]
{answer}

Explain your judgement in at most three sentences. Then, on the last line, rate the answer from 1 (wrong or \
useless) to 10 (correct and excellent), exactly as: Rating: <number>"""
PAIRWISE = """Compare two assistants' answers to the conversation below: which one is more correct, then more \
helpful, relevant and clear? Be objective; neither the order of the answers nor their length is a merit.

[Conversation]
{conversation}

[Answer A]
{first}

[Answer B]
{second}

Explain your judgement in at most three sentences. Then, on the last line, give your verdict exactly as one of: \
Verdict: A / Verdict: B / Verdict: tie"""

_NUMBER = r"(\d+(?:\.\d+)?)"
_RATINGS = (re.compile(rf"rating\s*[:=]\s*\**\[*\s*{_NUMBER}", re.IGNORECASE),  # the asked form, bold or bracketed
            re.compile(rf"\[\[\s*{_NUMBER}\s*\]\]"),  # MT-Bench's [[7]]
            re.compile(rf"\b{_NUMBER}\s*/\s*10\b"))  # 7/10
_VERDICTS = (re.compile(r"verdict\s*[:=]\s*\**\[*\s*(A|B|tie)\b", re.IGNORECASE),
             re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE))


def parse_rating(reply: str) -> float | None:
    """The 1-10 rating a reply ends with; None when it gives none in range. The last rating written wins: a judge
    may quote the scale before giving its own."""
    text = reply.strip()
    found = next((matches for pattern in _RATINGS if (matches := pattern.findall(text))), None)
    rating = float(found[-1]) if found else float(text) if re.fullmatch(_NUMBER, text) else None
    return rating if rating is not None and 1 <= rating <= 10 else None


def parse_verdict(reply: str) -> Verdict | None:
    """A, B or tie, as the reply's last verdict says; None when it says none."""
    text = reply.strip()
    for pattern in _VERDICTS:
        found = pattern.findall(text)
        if found:
            verdict = found[-1]
            return "tie" if verdict.lower() == "tie" else verdict.upper()
    return text.upper() if text.upper() in ("A", "B") else "tie" if text.lower() == "tie" else None


def logged_share(shown_first: Verdict, shown_second: Verdict) -> float:
    """The logged answer's share of two verdicts: with it shown first (as A), then second (as B)."""
    first = {"A": 1.0, "B": 0.0, "tie": 0.5}[shown_first]
    second = {"A": 0.0, "B": 1.0, "tie": 0.5}[shown_second]
    return (first + second) / 2


@dataclass(frozen=True)
class Logged:
    """A logged decision with its text: the conversation (messages) and the answer it got."""

    decision_id: str
    messages: list[dict[str, Any]]
    answer: str
    expert: str | None


@dataclass(frozen=True)
class Judgement:
    decision_id: str
    score: float  # 0 (bad) to 1 (good), as feedback keeps it
    expert: str | None  # the expert that should have answered, when another one won
    comment: str


@dataclass
class Tally:
    """What a run did, for the one line it prints."""

    sampled: int = 0
    unparseable: int = 0  # the judge answered without a readable rating or verdict: skipped
    failed: int = 0  # an expert call failed (the judge's, or the other expert's answer): skipped
    unreadable: int = 0  # the stored prompt is not a list of messages: skipped
    judgements: list[Judgement] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return len(self.judgements)

    def line(self) -> str:
        return (f"sampled {self.sampled}, judged {self.judged}; skipped {self.unparseable} unparseable replies, "
                f"{self.failed} failed calls, {self.unreadable} unreadable prompts")


def conversation_text(messages: Sequence[Mapping[str, Any]]) -> str:
    from routers.base import content_text

    return "\n".join(f"{message.get('role', 'user')}: {content_text(message.get('content'))}" for message in messages)


def source_of(judge: str) -> str:
    """`judge:<expert>`, in the form POST /v1/feedback accepts; a ValueError for a name that cannot fit it."""
    source = f"judge:{judge.lower()}"
    if not SOURCE.fullmatch(source):
        raise ValueError(f"the judge's name {judge!r} cannot make a feedback source (`judge:<name>`, up to 50 of "
                         "a-z, 0-9, _ . : -)")
    return source


def sample(engine: Engine, source: str, since: datetime, size: int, virtual_models: Sequence[str] = ()) -> list[
        tuple[str, str, str, str | None]]:
    """Up to `size` answered decisions since `since` that kept their text and have no feedback from `source` yet,
    drawn at random: (id, prompt, answer, chosen expert)."""
    from sqlalchemy import exists, func, select

    from migrations.schema import DecisionRow, FeedbackRow

    judged = exists().where(FeedbackRow.decision_id == DecisionRow.id, FeedbackRow.source == source)
    query = (select(DecisionRow.id, DecisionRow.prompt, DecisionRow.answer, DecisionRow.chosen_expert)
             .where(DecisionRow.created_at >= since, DecisionRow.http_status == 200, DecisionRow.prompt.is_not(None),
                    DecisionRow.answer.is_not(None), ~judged)
             .order_by(func.random()).limit(size))
    if virtual_models:
        query = query.where(DecisionRow.virtual_model.in_(virtual_models))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def write_feedback(engine: Engine, source: str, judgements: Sequence[Judgement]) -> None:
    """One feedback row per decision and source: a decision judged again has its row replaced, never doubled."""
    from sqlalchemy.dialects import postgresql, sqlite

    from migrations.schema import FeedbackRow

    if not judgements:
        return
    now = datetime.now(UTC)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    rows = [{"decision_id": j.decision_id, "source": source, "score": j.score, "expert": j.expert,
             "comment": j.comment, "created_at": now, "updated_at": now} for j in judgements]
    insert = dialect.insert(FeedbackRow)
    upsert = insert.on_conflict_do_update(
        index_elements=["decision_id", "source"],
        set_={name: insert.excluded[name] for name in ("score", "expert", "comment", "updated_at")},
    )
    with engine.begin() as conn:
        conn.execute(upsert, rows)


class Judge:
    """Asks the judge (and, pairwise, the other expert) through the experts' own clients."""

    def __init__(self, clients: Mapping[str, ExpertClient], judge: str, against: str | None, max_tokens: int) -> None:
        self.clients, self.judge, self.against = clients, judge, against
        self.params = {"temperature": 0, "max_tokens": max_tokens}

    async def _ask(self, expert: str, messages: list[dict[str, Any]]) -> str:
        from experts.pool import Answer

        return Answer(expert, await self.clients[expert].complete(messages, self.params)).text

    async def _judge(self, prompt: str) -> str:
        return await self._ask(self.judge, [{"role": "system", "content": JUDGE_SYSTEM},
                                            {"role": "user", "content": prompt}])

    async def one(self, logged: Logged, tally: Tally) -> None:
        """Judge one decision into the tally: a judgement, or the reason it was skipped."""
        from experts.client import ExpertFailure

        conversation = conversation_text(logged.messages)
        try:
            if self.against is None:
                reply = await self._judge(RUBRIC.format(conversation=conversation, answer=logged.answer))
                rating = parse_rating(reply)
                judgement = None if rating is None else Judgement(logged.decision_id, (rating - 1) / 9, None,
                                                                  f"rated {rating:g}/10")
            else:
                judgement = await self._pairwise(logged, conversation)
        except ExpertFailure:
            tally.failed += 1
            return
        if judgement is None:
            tally.unparseable += 1
        else:
            tally.judgements.append(judgement)

    async def _pairwise(self, logged: Logged, conversation: str) -> Judgement | None:
        assert self.against is not None
        other = await self._ask(self.against, logged.messages)
        first, second = await asyncio.gather(
            self._judge(PAIRWISE.format(conversation=conversation, first=logged.answer, second=other)),
            self._judge(PAIRWISE.format(conversation=conversation, first=other, second=logged.answer)))
        shown_first, shown_second = parse_verdict(first), parse_verdict(second)
        if shown_first is None or shown_second is None:
            return None
        score = logged_share(shown_first, shown_second)
        return Judgement(logged.decision_id, score, self.against if score == 0 else None,
                         f"against {self.against}: logged answer shown first {shown_first}, second {shown_second}")


async def judge_sample(judge: Judge, rows: Sequence[tuple[str, str, str, str | None]], concurrency: int) -> Tally:
    tally = Tally(sampled=len(rows))
    slots = asyncio.Semaphore(concurrency)

    async def bounded(logged: Logged) -> None:
        async with slots:
            await judge.one(logged, tally)

    readable = []
    for decision_id, prompt, answer, expert in rows:
        messages = _messages(prompt)
        if messages is None:
            tally.unreadable += 1
        else:
            readable.append(Logged(decision_id, messages, answer, expert))
    await asyncio.gather(*(bounded(logged) for logged in readable))
    return tally


def _messages(prompt: str) -> list[dict[str, Any]] | None:
    try:
        messages = json.loads(prompt)
    except json.JSONDecodeError:
        return None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    return messages


def judge_command(
    judge: Annotated[str, typer.Option(help="the expert that judges (a name under the config's experts:)")],
    last: Annotated[str, typer.Option(help="the window: decisions of the last 30d, 12h or 90m")] = "1d",
    size: Annotated[int, typer.Option("--sample", min=1, help="decisions judged at most, drawn at random")] = 100,
    against: Annotated[str | None, typer.Option(help="pairwise: this expert answers too, and the judge compares "
                                                     "both answers, each shown first once")] = None,
    virtual_model: Annotated[list[str] | None, typer.Option(help="only this virtual model's decisions "
                                                                 "(repeatable)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="decisions judged at once")] = 8,
    max_tokens: Annotated[int, typer.Option(min=16, help="of each reply (the judge's, the other expert's)")] = 512,
    config: Annotated[Path | None, typer.Option(envvar="MOE_CONFIG", help="gateway YAML naming the experts")] = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Score sampled logged answers with a judge expert; written as feedback with the source judge:<expert>."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from migrations.retention import parse_age

    try:
        since = datetime.now(UTC) - parse_age(last)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--last") from None
    experts = _experts(config, [judge, *([against] if against else [])])
    try:
        source = source_of(judge)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--judge") from None
    engine = create_engine(database_url)
    try:
        rows = sample(engine, source, since, size, virtual_model or ())
        tally = asyncio.run(_run(experts, judge, against, max_tokens, rows, concurrency))
        write_feedback(engine, source, tally.judgements)
    except SQLAlchemyError as exc:
        console.print(f"[red]the decision log at --database-url cannot be used: {type(exc).__name__}[/red] "
                      "(is it migrated? moe db upgrade)")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    console.print(f"{source}: {tally.line()}")
    if tally.sampled and not tally.judged:
        raise typer.Exit(1)


async def _run(experts: Sequence[Any], judge: str, against: str | None, max_tokens: int,
               rows: Sequence[tuple[str, str, str, str | None]], concurrency: int) -> Tally:
    from experts.client import ExpertClients

    clients = ExpertClients(experts)
    try:
        return await judge_sample(Judge(clients, judge, against, max_tokens), rows, concurrency)
    finally:
        await clients.aclose()


def _experts(config: Path | None, names: Sequence[str]) -> list[Any]:
    """The named experts of the config, validated as the gateway validates them; a clear exit otherwise."""
    import yaml
    from pydantic import ValidationError

    from experts.registry import Fleet
    from training.train import DEFAULT_CONFIG

    path = config or DEFAULT_CONFIG
    try:
        document = yaml.safe_load(path.read_text()) or {}
        fleet = Fleet.model_validate({"experts": document.get("experts") or [], "servers": document.get("servers") or []})
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
        console.print(f"[red]cannot read the experts of {path}[/red]: {exc}")
        raise typer.Exit(2) from None
    known = {expert.name: expert for expert in fleet.experts}
    missing = [name for name in names if name not in known]
    if missing:
        console.print(f"[red]not an expert of {path}[/red]: {', '.join(missing)}; its experts: {', '.join(known)}")
        raise typer.Exit(2)
    return [known[name] for name in dict.fromkeys(names)]

