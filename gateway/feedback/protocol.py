"""`POST /v1/feedback`: how good a decision's answer was, as a score in [0, 1] or thumbs up/down, optionally naming
the expert that should have answered. Its fields may also come as OpenAI-style `metadata` (string values)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

FIELDS = ("decision_id", "score", "thumbs", "expert", "comment", "source")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    decision_id: str = Field(min_length=1, max_length=36, description="the `x-moe-decision-id` the answer came with")
    score: float | None = Field(None, ge=0, le=1, description="0 (bad) to 1 (good); or `thumbs`")
    thumbs: Literal["up", "down"] | None = Field(None, description="up: score 1, down: score 0")
    expert: str | None = Field(None, min_length=1, max_length=200, description="the expert that should have answered")
    comment: str | None = Field(None, max_length=4000)
    source: str = Field("user", pattern=r"^[a-z0-9_.:-]{1,50}$", description="who judges; one feedback per decision and source")

    @model_validator(mode="before")
    @classmethod
    def _from_metadata(cls, data: Any) -> Any:
        """`{"metadata": {"decision_id": "...", "score": "0.8"}}`, OpenAI's shape (up to 16 string values)."""
        if not isinstance(data, dict) or "metadata" not in data:
            return data
        metadata, rest = data["metadata"], {k: v for k, v in data.items() if k != "metadata"}
        if not isinstance(metadata, dict) or len(metadata) > 16 or set(metadata) - set(FIELDS):
            raise ValueError(f"metadata: up to 16 of {', '.join(FIELDS)}")
        lifted = dict(metadata)
        if isinstance(lifted.get("score"), str):
            try:
                lifted["score"] = float(lifted["score"])
            except ValueError:
                raise ValueError("metadata.score: a number from 0 to 1") from None
        return {**lifted, **rest}

    @model_validator(mode="after")
    def _one_verdict(self) -> Self:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give one of `score` (0 to 1) and `thumbs` (up or down)")
        return self

    @property
    def value(self) -> float:
        return self.score if self.score is not None else 1.0 if self.thumbs == "up" else 0.0


class Feedback(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["feedback"] = "feedback"
    id: int
    decision_id: str
    source: str
    score: float
    expert: str | None
    comment: str | None
    created_at: datetime
    updated_at: datetime
