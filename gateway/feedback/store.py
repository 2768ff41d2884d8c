"""The feedback table, and who may give feedback on a decision. Blocking: the gateway calls it from worker threads."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.feedback.protocol import Feedback, FeedbackRequest
from gateway.keys.store import ApiKey
from migrations.schema import DecisionRow, FeedbackRow

Owner = tuple[int | None, str | None]  # the decision's API key id and tenant


def may_give_feedback(caller: ApiKey | None, owner: Owner) -> bool:
    """The key that made the request, its tenant, or an admin; with keys not required, any decision made so."""
    key_id, tenant = owner
    if caller is None:
        return tenant is None
    return caller.admin or caller.id == key_id or (tenant is not None and caller.tenant == tenant)


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def owner(self, decision_id: str) -> Owner | None:
        """Who made the decision, once the decision log has written it; None when there is no such decision."""
        with Session(self.engine) as session:
            row = session.execute(
                select(DecisionRow.api_key_id, DecisionRow.tenant).where(DecisionRow.id == decision_id)
            ).first()
        return None if row is None else (row.api_key_id, row.tenant)

    def put(self, given: FeedbackRequest, caller: ApiKey | None) -> Feedback:
        """Insert, or replace what the same source said of the same decision: posting again changes nothing more."""
        for _ in range(2):  # a concurrent first insert of the same (decision, source) wins; ours then updates it
            try:
                return self._upsert(given, caller)
            except IntegrityError:
                continue
        raise RuntimeError("feedback upsert kept conflicting")

    def _upsert(self, given: FeedbackRequest, caller: ApiKey | None) -> Feedback:
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.scalars(
                select(FeedbackRow).where(FeedbackRow.decision_id == given.decision_id, FeedbackRow.source == given.source)
            ).first()
            if row is None:
                row = FeedbackRow(decision_id=given.decision_id, source=given.source, created_at=now)
                session.add(row)
            row.score, row.expert, row.comment, row.updated_at = given.value, given.expert, given.comment, now
            row.api_key_id, row.tenant = (caller.id, caller.tenant) if caller else (None, None)
        return Feedback.model_validate(row)
