"""The dashboard's reads of the decision log: decisions page by page, one decision whole, feedback over time.
Blocking (SQLAlchemy): the API runs them in worker threads.

Built to stay fast with 10 million decisions: a page walks an index newest first from a keyset cursor on
(created_at, id), never OFFSET and never a count of the table, so the hundredth page costs what the first does.
Without a filter that is ix_decisions_created_at; with one, the (column, created_at) index of that column
(migrations/schema.py), so a tenant with a few decisions among millions, or a rare status, finds its own without
reading anyone else's. Aggregates read a window bounded by created_at (stats.py).
"""

from __future__ import annotations

from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Integer, case, cast, func, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from experts.pool import ExpertCall
from gateway.ui.protocol import DecisionFull, DecisionSummary, FeedbackSummary, FeedbackView
from migrations.schema import DecisionRow, ExpertCallRow, FeedbackRow

SUMMARY = (
    DecisionRow.id,
    DecisionRow.created_at,
    DecisionRow.tenant,
    DecisionRow.api_key_id,
    DecisionRow.virtual_model,
    DecisionRow.requested_model,
    DecisionRow.router,
    DecisionRow.router_version,
    DecisionRow.chosen_expert,
    DecisionRow.ranked,
    DecisionRow.status,
    DecisionRow.http_status,
    DecisionRow.routing_ms,
    DecisionRow.upstream_ms,
    DecisionRow.ttft_ms,
    DecisionRow.prompt_tokens,
    DecisionRow.completion_tokens,
    DecisionRow.cost_usd,
    DecisionRow.stream,
    DecisionRow.explored,
    DecisionRow.cache_hit,
)  # never the kept prompt and answer: the dashboard shows how a request was served, not what it said
FULL = (
    *SUMMARY,
    DecisionRow.error,
    DecisionRow.propensity,
    DecisionRow.shadow_version,
    DecisionRow.shadow_expert,
    DecisionRow.shadow_agrees,
    DecisionRow.policy,
    DecisionRow.recruited,
)
CALLS = (
    ExpertCallRow.attempt,
    ExpertCallRow.expert,
    ExpertCallRow.started_at,
    ExpertCallRow.status,
    ExpertCallRow.latency_ms,
    ExpertCallRow.ttft_ms,
    ExpertCallRow.error,
    ExpertCallRow.prompt_tokens,
    ExpertCallRow.completion_tokens,
)


def utc(moment: datetime) -> datetime:
    """A time from the database as UTC: SQLite gives back the UTC wall time it stored, without a zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def epoch_bucket(engine: Engine, column: Any, step_s: int) -> ColumnElement[Any]:
    """Which `step_s`-second interval since the epoch a time falls in. The step is written into the statement, not
    bound: the GROUP BY repeats the expression, and PostgreSQL takes two bound parameters for two expressions."""
    step = literal_column(str(int(step_s)))
    if engine.dialect.name == "postgresql":
        return func.floor(func.extract("epoch", column) / step)
    return cast(func.strftime(literal_column("'%s'"), column), Integer).op("/")(step)  # integer division


@dataclass(frozen=True)
class DecisionFilter:
    """Which decisions: `scope` is a tenant key's own tenant (None: an admin's view of every tenant), the others
    the page's filters (None: any)."""

    scope: str | None = None
    tenant: str | None = None
    virtual_model: str | None = None
    expert: str | None = None
    status: str | None = None
    router_version: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        wanted = (
            (DecisionRow.tenant, self.scope),
            (DecisionRow.tenant, self.tenant),
            (DecisionRow.virtual_model, self.virtual_model),
            (DecisionRow.chosen_expert, self.expert),
            (DecisionRow.status, self.status),
            (DecisionRow.router_version, self.router_version),
        )
        return [column == value for column, value in wanted if value is not None]

    def by_tenant(self) -> bool:
        return self.scope is not None or self.tenant is not None


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: the last decision shown, by (created_at, id)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        return urlsafe_b64encode(f"{self.created_at.isoformat()} {self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A ValueError for anything `encode` did not write."""
        moment, _, decision_id = urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition(" ")
        created = datetime.fromisoformat(moment)
        if not decision_id or "\x00" in decision_id or created.tzinfo is None:
            raise ValueError("not a cursor")
        return cls(created.astimezone(UTC), decision_id)


@dataclass(frozen=True)
class Decision:
    """One decision whole: its record, its expert calls in order, the feedback on it."""

    record: DecisionFull
    calls: list[ExpertCall]
    feedback: list[FeedbackView]


@dataclass(frozen=True)
class FeedbackCounts:
    bucket: int  # epoch_bucket's interval
    count: int
    mean_score: float
    thumbs_up: int
    thumbs_down: int


class DecisionQueries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def page(
        self, where: DecisionFilter, limit: int, after: Cursor | None
    ) -> tuple[list[DecisionSummary], Cursor | None]:
        """Up to `limit` decisions older than `after` (the newest without it), newest first, and the cursor of the
        next page (None on the last)."""
        query = select(*SUMMARY).where(*where.conditions())
        if after is not None:
            # The first condition bounds the index range; the second breaks ties of created_at by id.
            query = query.where(
                DecisionRow.created_at <= after.created_at,
                or_(DecisionRow.created_at < after.created_at, DecisionRow.id < after.id),
            )
        query = query.order_by(DecisionRow.created_at.desc(), DecisionRow.id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            shown = rows[:limit]
            feedback = _feedback_summaries(conn, [row["id"] for row in shown])
        page = [
            DecisionSummary.model_validate(
                {**row, "created_at": utc(row["created_at"]), "feedback": feedback.get(row["id"], FeedbackSummary())}
            )
            for row in shown
        ]
        more = len(rows) > limit
        return page, Cursor(page[-1].created_at, page[-1].id) if more else None

    def decision(self, decision_id: str, scope: str | None) -> Decision | None:
        """The decision, or None when there is none or it is another tenant's (`scope`: a tenant key's tenant)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*FULL).where(DecisionRow.id == decision_id)).mappings().first()
            if row is None or (scope is not None and row["tenant"] != scope):
                return None
            calls = (
                conn.execute(
                    select(*CALLS).where(ExpertCallRow.decision_id == decision_id).order_by(ExpertCallRow.attempt)
                )
                .mappings()
                .all()
            )
            feedback = (
                conn.execute(
                    select(
                        FeedbackRow.source,
                        FeedbackRow.score,
                        FeedbackRow.expert,
                        FeedbackRow.comment,
                        FeedbackRow.created_at,
                    )
                    .where(FeedbackRow.decision_id == decision_id)
                    .order_by(FeedbackRow.created_at, FeedbackRow.id)
                )
                .mappings()
                .all()
            )
            summary = _feedback_summaries(conn, [decision_id]).get(decision_id, FeedbackSummary())
        return Decision(
            DecisionFull.model_validate({**row, "created_at": utc(row["created_at"]), "feedback": summary}),
            [ExpertCall(**{**call, "started_at": utc(call["started_at"])}) for call in calls],
            [FeedbackView.model_validate({**f, "created_at": utc(f["created_at"])}) for f in feedback],
        )

    def feedback_counts(self, where: DecisionFilter, since: datetime, step_s: int) -> list[FeedbackCounts]:
        """Feedback given since `since`, per `step_s` interval; by tenant, the feedback on that tenant's decisions
        (whoever gave it: a judge's too)."""
        bucket = epoch_bucket(self.engine, FeedbackRow.created_at, step_s)
        query = select(
            bucket,
            func.count(),
            func.avg(FeedbackRow.score),
            func.sum(case((FeedbackRow.score >= 1, 1), else_=0)),
            func.sum(case((FeedbackRow.score <= 0, 1), else_=0)),
        ).where(FeedbackRow.created_at >= since)
        if where.by_tenant():
            query = query.join(DecisionRow, DecisionRow.id == FeedbackRow.decision_id).where(*where.conditions())
        with self.engine.connect() as conn:
            rows = conn.execute(query.group_by(bucket)).all()
        return [FeedbackCounts(int(b), count, float(mean), int(up), int(down)) for b, count, mean, up, down in rows]


def _feedback_summaries(conn: Connection, ids: Sequence[str]) -> dict[str, FeedbackSummary]:
    """How many feedbacks each decision has and their mean score: one query by the feedback's decision_id index."""
    if not ids:
        return {}
    rows = conn.execute(
        select(FeedbackRow.decision_id, func.count(), func.avg(FeedbackRow.score))
        .where(FeedbackRow.decision_id.in_(ids))
        .group_by(FeedbackRow.decision_id)
    ).all()
    return {decision_id: FeedbackSummary(count=count, mean_score=mean) for decision_id, count, mean in rows}
