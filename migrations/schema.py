"""The decision log's tables (one row per request, one per expert call, the records set aside), the feedback on
decisions, and the API keys.

Alembic owns the schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        # The retraining window: a virtual model's decisions between two times (migrations/decision_window.py),
        # joined to their feedback by its indexed decision_id. It serves lookups by virtual model alone too.
        Index("ix_decisions_virtual_model_created_at", "virtual_model", "created_at"),
        # The decisions still holding text, by virtual model and age: what `moe db prune` clears past a retention,
        # without reading the rows that keep none (most of them) or those it cleared already.
        Index("ix_decisions_text_kept", "virtual_model", "created_at", postgresql_where=text("prompt IS NOT NULL"),
              sqlite_where=text("prompt IS NOT NULL")),
        # The dashboard's pages of decisions by tenant, chosen expert, status or router version, newest first
        # (gateway/ui/queries.py): each walks its own index from its cursor, so a rare value among millions of rows
        # costs what a common one does. They serve lookups by the column alone too.
        Index("ix_decisions_tenant_created_at", "tenant", "created_at"),
        Index("ix_decisions_chosen_expert_created_at", "chosen_expert", "created_at"),
        Index("ix_decisions_status_created_at", "status", "created_at"),
        Index("ix_decisions_router_version_created_at", "router_version", "created_at"),
        # The decisions a shadow version also took, by time: its agreement over a window without reading the rest.
        Index("ix_decisions_shadowed", "created_at", postgresql_where=text("shadow_version IS NOT NULL"),
              sqlite_where=text("shadow_version IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    requested_model: Mapped[str] = mapped_column(String(200))
    virtual_model: Mapped[str | None] = mapped_column(String(200))
    policy: Mapped[str | None] = mapped_column(String(50))  # the cost knob the request asked for
    router: Mapped[str | None] = mapped_column(String(100))
    router_version: Mapped[str | None] = mapped_column(String(100))
    ranked: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    recruited: Mapped[list[str]] = mapped_column(Json, default=list)
    chosen_expert: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float | None] = mapped_column(Float)
    # The probability with which the serving policy chose `chosen_expert` (1.0 without exploration), and whether
    # the choice was exploration: what off-policy estimates from the log need.
    propensity: Mapped[float | None] = mapped_column(Float)
    explored: Mapped[bool] = mapped_column(Boolean, default=False)
    # A shadow router version's decision on the same request (sampled; never served): which version, its pick,
    # whether it agrees with the served pick, and its predicted quality minus the served router's.
    shadow_version: Mapped[str | None] = mapped_column(String(200))
    shadow_expert: Mapped[str | None] = mapped_column(String(200))
    shadow_agrees: Mapped[bool | None] = mapped_column(Boolean)
    shadow_delta: Mapped[float | None] = mapped_column(Float)
    routing_ms: Mapped[float | None] = mapped_column(Float)
    upstream_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    cache_hit: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(40))
    http_status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64), index=True)
    # Text kept for retraining where a virtual model opts in (`store_text`, or MOE_LOG_PROMPTS for every request),
    # redacted by its hook: the messages as JSON, and the answer's text (null for an answer that never completed).
    prompt: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    # Who asked (null when API keys are not required). No foreign key: a log insert must never fail.
    api_key_id: Mapped[int | None] = mapped_column(Integer, index=True)
    tenant: Mapped[str | None] = mapped_column(String(200))
    calls: Mapped[list[ExpertCallRow]] = relationship(order_by="ExpertCallRow.attempt", lazy="selectin")


class ExpertCallRow(Base):
    __tablename__ = "expert_calls"

    decision_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("decisions.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert: Mapped[str] = mapped_column(String(200), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)


class DeadLetterRow(Base):
    """A decision record the database refused for its data (not for being down), set aside so the rest drain."""

    __tablename__ = "decision_dead_letters"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the record's id, else a hash of its line
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    error: Mapped[str] = mapped_column(Text)
    record: Mapped[str] = mapped_column(Text)  # the record as JSON text


class FeedbackRow(Base):
    """How good a decision's answer was, from one source (the user, a judge...): one row per decision and source.
    No foreign key to the decision: feedback may arrive before the decision log has written its row."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("decision_id", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(36), index=True)
    source: Mapped[str] = mapped_column(String(50))
    score: Mapped[float] = mapped_column(Float)  # 0 (bad) to 1 (good); thumbs up 1, down 0
    expert: Mapped[str | None] = mapped_column(String(200))  # the expert that should have answered
    comment: Mapped[str | None] = mapped_column(Text)
    api_key_id: Mapped[int | None] = mapped_column(Integer)  # who gave it
    tenant: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RouterVersionRow(Base):
    """A trained router artifact for one of the config's routers, stored whole (a gzipped tar) so every replica on
    any machine can load it: candidate, shadow, active (at most one per router) or retired."""

    __tablename__ = "router_versions"
    __table_args__ = (UniqueConstraint("router", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    router: Mapped[str] = mapped_column(String(100), index=True)  # the config's router name
    family: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(100))  # the artifact's own (router.json)
    status: Mapped[str] = mapped_column(String(20), index=True)
    parent_id: Mapped[int | None] = mapped_column(Integer)  # the version it was retrained from
    # A candidate serving this share of traffic beside the active version (A/B), sticky per API key or user.
    traffic_share: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """An API key; the key itself is never stored, only its hash and a prefix to recognise it by."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex, see gateway/keys/store.py
    key_prefix: Mapped[str] = mapped_column(String(20))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)  # null: unlimited
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- the Responses API's stored responses (gateway/responses/) -------------------------------------------------
class ResponseRow(Base):
    """A response kept for `previous_response_id` and `GET /v1/responses/{id}`, visible to its tenant only (null:
    keys not required). JSON as text: JSONB refuses the NUL character that a client's text may hold."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    tenant: Mapped[str | None] = mapped_column(String(200))
    messages: Mapped[str] = mapped_column(Text)  # the conversation as chat messages, this response's answer last
    response: Mapped[str] = mapped_column(Text)  # the Response object as the client got it


# -- the Batch API (gateway/batch/) ---------------------------------------------------------------------------
class FileRow(Base):
    """A Batch API file: an uploaded batch input, or a batch's output or error file. Its bytes are in the file store
    (MOE_FILES_DIR), named by its id. It belongs to its uploader's tenant (null: keys not required)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created_at", "tenant", "created_at"),)  # a tenant's files, newest first

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(20))  # batch (uploaded) or batch_output (written by a batch)
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    tenant: Mapped[str | None] = mapped_column(String(200))


class BatchRow(Base):
    """A Batch API batch: its state as OpenAI's Batch object shows it, and which gateway process runs it (`runner`,
    alive while it renews `heartbeat_at`: another process takes over a batch whose runner stopped renewing)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created_at", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    endpoint: Mapped[str] = mapped_column(String(100))
    completion_window: Mapped[str] = mapped_column(String(10))
    input_file_id: Mapped[str] = mapped_column(String(64))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", Json)  # `metadata` is SQLAlchemy's own name
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)  # why the batch failed, when it did
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    api_key_id: Mapped[int | None] = mapped_column(Integer)  # its decision records name this key and tenant
    tenant: Mapped[str | None] = mapped_column(String(200))
    runner: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
