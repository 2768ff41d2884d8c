"""The operator views' aggregates over a window of the decision log bounded by created_at: traffic, latency, errors
and cost per expert; router versions' shadow agreement and A/B traffic; a served version's live operating point.
Blocking (SQLAlchemy): the API runs them in worker threads.

Latency percentiles are PostgreSQL's percentile_cont. SQLite has none: there the window's latencies are read and
interpolated the same way in Python (numpy's linear percentile is percentile_cont); the window bounds them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, case, func, select

from gateway.ui.queries import epoch_bucket
from migrations.schema import DecisionRow, ExpertCallRow, FeedbackRow

NOT_FAILED = ("ok", "cancelled")  # a call's status when the expert did not fail (cancelled: the client left)


@dataclass(frozen=True)
class CallStats:
    calls: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class ExpertWindow:
    """Per expert over a window: the decisions it answered and their cost (key None: no expert answered), its calls,
    and the answered decisions and cost per interval of the window."""

    answered: dict[str | None, tuple[int, float]]
    calls: dict[str, CallStats]
    buckets: dict[tuple[int, str], tuple[int, float]]  # (epoch_bucket's interval, expert) -> (decisions, cost)


@dataclass(frozen=True)
class LiveStats:
    requests: int
    cost_usd: float
    quality: float | None  # mean feedback score; None without feedback


class WindowStats:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def experts(self, since: datetime, step_s: int) -> ExpertWindow:
        in_window = DecisionRow.created_at >= since
        cost = func.coalesce(func.sum(DecisionRow.cost_usd), 0.0)
        bucket = epoch_bucket(self.engine, DecisionRow.created_at, step_s)
        with self.engine.connect() as conn:
            answered = conn.execute(
                select(DecisionRow.chosen_expert, func.count(), cost)
                .where(in_window)
                .group_by(DecisionRow.chosen_expert)
            ).all()
            buckets = conn.execute(
                select(bucket, DecisionRow.chosen_expert, func.count(), cost)
                .where(in_window, DecisionRow.chosen_expert.is_not(None))
                .group_by(bucket, DecisionRow.chosen_expert)
            ).all()
            calls = (
                select(ExpertCallRow.expert)
                .join(DecisionRow, DecisionRow.id == ExpertCallRow.decision_id)
                .where(in_window)
            )
            if self.postgres:
                latency = ExpertCallRow.latency_ms
                rows = conn.execute(
                    calls.add_columns(
                        func.count(),
                        func.sum(case((ExpertCallRow.status.not_in(NOT_FAILED), 1), else_=0)),
                        func.percentile_cont(0.5).within_group(latency),
                        func.percentile_cont(0.99).within_group(latency),
                    ).group_by(ExpertCallRow.expert)
                ).all()
                stats = {expert: CallStats(n, int(errors), p50, p99) for expert, n, errors, p50, p99 in rows}
            else:
                stats = _call_stats(
                    conn.execute(calls.add_columns(ExpertCallRow.status, ExpertCallRow.latency_ms)).all()
                )
        return ExpertWindow(
            {expert: (n, float(usd)) for expert, n, usd in answered},
            stats,
            {(int(b), expert): (n, float(usd)) for b, expert, n, usd in buckets},
        )

    def version_requests(self, versions: Sequence[str], since: datetime) -> dict[str, int]:
        """Decisions each router version made since `since`."""
        if not versions:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(DecisionRow.router_version, func.count())
                .where(DecisionRow.router_version.in_(versions), DecisionRow.created_at >= since)
                .group_by(DecisionRow.router_version)
            ).all()
        return {version: n for version, n in rows}

    def shadow_agreement(self, since: datetime) -> dict[str, tuple[int, float]]:
        """Per shadow version string (as the log has it, <router>@<version>): the decisions it shadowed since
        `since` and the share on which it picked the served expert."""
        agrees = func.avg(case((DecisionRow.shadow_agrees.is_(True), 1.0), else_=0.0))
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(DecisionRow.shadow_version, func.count(), agrees)
                .where(DecisionRow.created_at >= since, DecisionRow.shadow_version.is_not(None))
                .group_by(DecisionRow.shadow_version)
            ).all()
        return {shadow: (n, float(share)) for shadow, n, share in rows}

    def live(self, router: str, version: str, since: datetime) -> LiveStats:
        """What a router version served since `since`: its decisions, their cost, the mean feedback on them."""
        served = (DecisionRow.router_version == version, DecisionRow.router == router, DecisionRow.created_at >= since)
        with self.engine.connect() as conn:
            requests, usd = conn.execute(
                select(func.count(), func.coalesce(func.sum(DecisionRow.cost_usd), 0.0)).where(*served)
            ).one()
            # Feedback on a decision comes after it: bounding its own time too lets the planner start from the
            # window's feedback (indexed by time) rather than from every decision of the window.
            quality = conn.execute(
                select(func.avg(FeedbackRow.score))
                .select_from(FeedbackRow)
                .join(DecisionRow, DecisionRow.id == FeedbackRow.decision_id)
                .where(*served, FeedbackRow.created_at >= since)
            ).scalar()
        return LiveStats(requests, float(usd), None if quality is None else float(quality))


def _call_stats(rows: Sequence[tuple[str, str, float | None]]) -> dict[str, CallStats]:
    """Calls, failures and latency percentiles per expert from (expert, status, latency) rows."""
    latencies: defaultdict[str, list[float]] = defaultdict(list)
    calls: defaultdict[str, int] = defaultdict(int)
    errors: defaultdict[str, int] = defaultdict(int)
    for expert, status, latency in rows:
        calls[expert] += 1
        errors[expert] += status not in NOT_FAILED
        if latency is not None:
            latencies[expert].append(latency)
    stats = {}
    for expert, n in calls.items():
        p50 = p99 = None
        if latencies[expert]:
            p50, p99 = (float(p) for p in np.percentile(latencies[expert], [50, 99]))
        stats[expert] = CallStats(n, errors[expert], p50, p99)
    return stats
