"""Process settings from the environment (the YAML config says what to route; this says where things live)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config import DEFAULT_CONFIG


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", env_file=".env", extra="ignore")

    moe_config: Path = Field(DEFAULT_CONFIG, description="YAML config; the embedded default when unset")
    database_url: str = Field("sqlite:///var/moe.db", description="SQLAlchemy URL of the decision log")
    redis_url: str | None = Field(None, description="shared state for several replicas (optional)")
    moe_cache_ttl_s: int = Field(3600, gt=0, description="how long a cached response is served (needs REDIS_URL)")
    moe_breaker_threshold: int = Field(5, gt=0, description="failures within the window that open an expert's breaker")
    moe_breaker_window_s: float = Field(30.0, gt=0)
    moe_breaker_cooldown_s: float = Field(30.0, gt=0, description="how long an open breaker ranks the expert last")
    moe_log_prompts: bool = Field(False, description="store prompt text in decision records")
    moe_max_in_flight: int = Field(256, gt=0, description="chat requests served at once; more get 429 + Retry-After")
    moe_max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="larger request bodies get 413")
    moe_spill_dir: Path = Field(Path("var/spill"), description="decision records wait here while the DB is down")
    moe_log_buffer: int = Field(10_000, gt=0, description="records held in memory before spilling to disk")
    moe_log_flush_s: float = Field(0.25, gt=0, description="how often buffered records are written")
    moe_health_interval_s: float = Field(10.0, gt=0, description="how often experts are probed for /readyz")
    # JSON by default: the gateway runs as a service whose stderr a log collector reads; `text` is for a terminal.
    moe_log_format: Literal["json", "text"] = Field("json", description="stderr log lines: JSON objects or plain text")
    moe_otel: bool = Field(False, description="OpenTelemetry traces, exported per the standard OTEL_* variables")
    moe_drain_s: float = Field(30.0, gt=0, description="on SIGTERM, how long in-flight requests may take to finish")
    # Off so the local quickstart needs no key; production (the Helm chart) turns it on.
    moe_require_api_key: bool = Field(False, description="every /v1 request needs `Authorization: Bearer <key>`")
    moe_key_cache_ttl_s: float = Field(
        10.0, gt=0, description="how long a looked-up API key is trusted; a revocation takes effect within it"
    )
    moe_router_poll_s: float = Field(
        2.0, gt=0, description="how often the active router versions are read from the database (hot reload)"
    )
    moe_router_versions_dir: Path = Field(
        Path("var/routers/.versions"), description="where router versions fetched from the database are unpacked"
    )
    moe_shadow_share: float = Field(
        0.1, ge=0, le=1, description="share of routed requests a shadow router version also decides (never served)"
    )
    moe_files_dir: Path = Field(
        Path("var/files"), description="Batch API files (uploads, batch outputs) and the journals of running batches"
    )
    # OpenAI's own limit on a batch input file. An upload is also a request body: MOE_MAX_BODY_BYTES applies first.
    moe_max_file_bytes: int = Field(200 * 1024 * 1024, gt=0, description="larger Batch API uploads get 413")
    moe_responses_retention_days: int = Field(
        30, gt=0, description="`moe db prune` removes stored responses (/v1/responses) older than this, as OpenAI does"
    )
