"""The dashboard API's request and response models (/ui/api: api_router.py): what the page reads and sends."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Caller(BaseModel):
    key_id: int
    name: str | None
    tenant: str
    admin: bool


# -- decisions -------------------------------------------------------------------------------------------------
class FeedbackSummary(BaseModel):
    count: int = 0
    mean_score: float | None = None


class Ranked(BaseModel):
    expert: str
    score: float


class DecisionSummary(BaseModel):
    id: str
    created_at: datetime
    tenant: str | None
    api_key_id: int | None
    virtual_model: str | None
    requested_model: str
    router: str | None
    router_version: str | None
    chosen_expert: str | None
    ranked: list[Ranked]
    status: str
    http_status: int
    routing_ms: float | None
    upstream_ms: float | None
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    stream: bool
    explored: bool
    cache_hit: bool | None
    feedback: FeedbackSummary = Field(default_factory=FeedbackSummary)


class DecisionPage(BaseModel):
    data: list[DecisionSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next, older page; null on the last")


class DecisionFull(DecisionSummary):
    error: str | None
    propensity: float | None
    shadow_version: str | None
    shadow_expert: str | None
    shadow_agrees: bool | None
    policy: str | None
    recruited: list[str]


class CallView(BaseModel):
    expert: str
    status: str
    latency_ms: float | None
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    error: str | None
    started_at: datetime


class FeedbackView(BaseModel):
    source: str
    score: float
    expert: str | None
    comment: str | None
    created_at: datetime


class DecisionDetail(BaseModel):
    decision: DecisionFull
    calls: list[CallView]
    feedback: list[FeedbackView]


# -- experts ---------------------------------------------------------------------------------------------------
class ExpertStats(BaseModel):
    name: str
    requests: int = Field(description="decisions the expert answered in the window")
    share: float = Field(description="of every decision in the window")
    p50_ms: float | None = Field(description="latency of its calls in the window")
    p99_ms: float | None
    errors: int = Field(description="its calls that failed")
    error_rate: float | None = Field(description="errors over its calls; null without calls")
    cost_usd: float
    healthy: bool
    breaker_open: bool


class CostBucket(BaseModel):
    bucket_start: datetime
    expert: str
    requests: int
    cost_usd: float


class ExpertsView(BaseModel):
    window_minutes: int
    experts: list[ExpertStats]
    cost_over_time: list[CostBucket]


# -- router versions -------------------------------------------------------------------------------------------
class ShadowStats(BaseModel):
    decisions: int = 0
    agreement: float | None = None


class ABStats(BaseModel):
    share: float
    requests: int


class VersionView(BaseModel):
    id: int
    version: str
    status: str
    created_at: datetime
    parent: int | None
    metrics: dict[str, Any]
    shadow: ShadowStats
    ab: ABStats | None


class RouterView(BaseModel):
    name: str
    serving: str = Field(description="<router>@<version> as this replica serves it (the x-moe-router header)")
    versions: list[VersionView]


class RoutersView(BaseModel):
    routers: list[RouterView]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: Literal["active", "shadow"] = "active"


class VersionChanged(BaseModel):
    router: str
    version: str
    status: str


# -- evaluation and feedback -----------------------------------------------------------------------------------
class CurvePoint(BaseModel):
    label: str
    cost_per_1k: float
    quality: float


class LivePoint(BaseModel):
    requests: int
    cost_per_1k: float | None
    quality: float | None


class EvaluationView(BaseModel):
    router: str
    version: str
    points: list[CurvePoint]
    live: LivePoint


class FeedbackBucket(BaseModel):
    start: datetime
    count: int
    mean_score: float | None
    thumbs_up: int = Field(description="feedback scoring 1 (a thumbs up gives 1)")
    thumbs_down: int = Field(description="feedback scoring 0 (a thumbs down gives 0)")


class FeedbackBuckets(BaseModel):
    buckets: list[FeedbackBucket]
