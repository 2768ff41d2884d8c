"""API keys as stored: issued once, kept hashed in the api_keys table (migrations/schema.py).

A key is `sk-moe-` and 256 random bits. Only its sha256 is stored: with that much entropy a fast
hash cannot be brute-forced, and an unsalted hash is found by value through an index (a salted,
slow password hash would need a scan and a slow check per request). The first characters
(`key_prefix`) name a key in listings and logs; the key itself is shown once and never logged.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from migrations.schema import ApiKeyRow

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-moe-"
SHOWN_CHARS = len(KEY_PREFIX) + 6  # how much of a key listings and logs show


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class NewKey(BaseModel):
    """What `moe keys create` and `POST /v1/admin/keys` take."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    tenant: str = Field(min_length=1, max_length=200, description="cached answers are never shared across tenants")
    rpm_limit: int | None = Field(None, gt=0, description="requests per minute; null: unlimited")
    tpm_limit: int | None = Field(None, gt=0, description="prompt + completion tokens per minute; null: unlimited")
    budget_usd: float | None = Field(None, ge=0, description="spend after which requests get 429; null: unlimited")
    admin: bool = Field(False, description="may manage keys through /v1/admin/keys")


class ApiKey(BaseModel):
    """A key as listings show it: everything but the key and its hash."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    object: Literal["api_key"] = "api_key"
    id: int
    name: str
    tenant: str
    key_prefix: str
    admin: bool
    rpm_limit: int | None
    tpm_limit: int | None
    budget_usd: float | None
    spent_usd: float
    created_at: datetime
    revoked_at: datetime | None


class CreatedKey(ApiKey):
    key: str = Field(description="the API key itself, shown this once")


class KeyStore:
    """The api_keys table. Blocking: the gateway calls it from worker threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def create(self, new: NewKey) -> CreatedKey:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(**new.model_dump(), key_hash=hash_key(key), key_prefix=key[:SHOWN_CHARS],
                        spent_usd=0.0, created_at=datetime.now(UTC))
        with self._session() as session, session.begin():
            session.add(row)
        log.info("api key %d (%s...) created for tenant %s", row.id, row.key_prefix, row.tenant)
        return CreatedKey(**ApiKey.model_validate(row).model_dump(), key=key)

    def list(self) -> list[ApiKey]:
        with self._session() as session:
            return [ApiKey.model_validate(row) for row in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, key_id: int) -> ApiKey | None:
        """The key, revoked (revoking twice keeps the first time); None when there is no such key."""
        with self._session() as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
                log.info("api key %d (%s...) revoked", row.id, row.key_prefix)
        return ApiKey.model_validate(row)

    def find(self, key_hash: str) -> ApiKey | None:
        """The live (unrevoked) key with this hash."""
        with self._session() as session:
            row = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None))
            ).first()
            return ApiKey.model_validate(row) if row else None

    def add_spend(self, amounts: Mapping[int, float]) -> dict[int, float]:
        """Add USD to each key's spend in one transaction; returns the new totals."""
        with self._session() as session, session.begin():
            for key_id, usd in amounts.items():
                session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(spent_usd=ApiKeyRow.spent_usd + usd)
                )
            rows = session.execute(select(ApiKeyRow.id, ApiKeyRow.spent_usd).where(ApiKeyRow.id.in_(list(amounts))))
            return {key_id: spent for key_id, spent in rows}
