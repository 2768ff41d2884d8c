"""Stored responses (the responses table), and who may see one. Blocking: the gateway calls it from worker threads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from gateway.keys.store import ApiKey
from migrations.schema import ResponseRow


@dataclass(frozen=True)
class StoredResponse:
    id: str
    api_key_id: int | None
    tenant: str | None
    messages: list[dict[str, Any]]  # the conversation as chat messages, the response's answer last
    response: dict[str, Any]


def visible_to(caller: ApiKey | None, stored: StoredResponse) -> bool:
    """A response is its tenant's, whichever of the tenant's keys made it; with keys not required, only those made
    so. Never an admin's across tenants: a response holds the conversation's text."""
    return stored.tenant is None if caller is None else caller.tenant == stored.tenant


class ResponseStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, stored: StoredResponse) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                ResponseRow(
                    id=stored.id,
                    created_at=datetime.now(UTC),
                    api_key_id=stored.api_key_id,
                    tenant=stored.tenant,
                    messages=json.dumps(stored.messages),
                    response=json.dumps(stored.response),
                )
            )

    def get(self, response_id: str) -> StoredResponse | None:
        with Session(self.engine) as session:
            row = session.get(ResponseRow, response_id)
        if row is None:
            return None
        return StoredResponse(row.id, row.api_key_id, row.tenant, json.loads(row.messages), json.loads(row.response))

    def delete(self, response_id: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(delete(ResponseRow).where(ResponseRow.id == response_id))
