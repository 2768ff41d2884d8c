"""The decision record: what one routed request asked for, who was ranked and called, what it cost and how it
ended. Every request that reaches routing leaves exactly one (gateway/chat/serving.py); the decision log
writes it (gateway/decisions/log.py) and training reads it back through migrations/schema.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from experts.pool import ExpertCall
from gateway.config import StoreTextConfig


@dataclass
class DecisionRecord:
    requested_model: str
    request_hash: str
    stream: bool
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    virtual_model: str | None = None
    policy: str | None = None
    router: str | None = None
    router_version: str | None = None
    ranked: list[dict[str, Any]] = field(default_factory=list)
    recruited: list[str] = field(default_factory=list)
    chosen_expert: str | None = None
    confidence: float | None = None
    propensity: float | None = None  # P(the serving policy sends the request to `chosen_expert` first); None: no router
    explored: bool = False  # the choice was exploration (a virtual model's `exploration`)
    shadow_version: str | None = None  # a shadow router version's decision beside the served one (never served)
    shadow_expert: str | None = None
    shadow_agrees: bool | None = None
    shadow_delta: float | None = None  # its predicted quality of its pick minus the served router's of its own
    routing_ms: float | None = None
    upstream_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cache_hit: bool | None = None  # None when the cache was not consulted
    status: str = "pending"
    http_status: int = 200
    error: str | None = None
    prompt: str | None = None  # the messages as JSON, as kept: filled from `messages` when the record is written
    answer: str | None = None  # the answer's text where the text is kept (see `keep_answer`), redacted when written
    api_key_id: int | None = None  # who asked, when API keys are required
    tenant: str | None = None
    calls: list[ExpertCall] = field(default_factory=list)
    # How this request's text is kept (None: it is not) and its messages, neither of them a column: the writer
    # serialises and redacts the text as it writes the record, off the request path, and nothing unredacted
    # reaches the database or a spill file.
    store_text: Annotated[StoreTextConfig | None, Field(exclude=True)] = field(default=None, repr=False, compare=False)
    messages: Annotated[list[dict[str, Any]] | None, Field(exclude=True)] = field(
        default=None, repr=False, compare=False
    )

    def settle(self, status: str, http_status: int, error: str | None = None) -> None:
        """How the request ended: the one place status and HTTP status are set, always together."""
        self.status, self.http_status, self.error = status, http_status, error

    def took(self, usage: dict[str, Any] | None) -> None:
        """The answer's token counts, when its usage says."""
        usage = usage or {}
        self.prompt_tokens, self.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")

    def keep_answer(self, text: str) -> None:
        """The answer's text, kept where the request's text is."""
        if self.store_text is not None:
            self.answer = text

    def as_row(self) -> dict[str, Any]:
        row = _AS_ROW.dump_python(self)
        if self.store_text is not None:  # an answer is kept only beside its prompt: retention finds it so
            messages = self.store_text.kept_messages(self.messages or [])
            row["prompt"] = None if messages is None else json.dumps(messages)
            row["answer"] = None if messages is None or self.answer is None else self.store_text.kept(self.answer)
        return row

    def to_json(self) -> str:
        return json.dumps(self.as_row(), default=_iso)

    @classmethod
    def from_json(cls, line: str) -> DecisionRecord:
        raw = json.loads(line)
        raw["created_at"] = datetime.fromisoformat(raw["created_at"])
        calls = [ExpertCall(**{**c, "started_at": datetime.fromisoformat(c["started_at"])}) for c in raw.pop("calls")]
        return cls(**raw, calls=calls)


# The same dicts as dataclasses.asdict, in 2.5 us a record instead of 47: a 500-record batch holds the GIL (which
# the event loop needs) for about 1 ms instead of 23.
_AS_ROW: TypeAdapter[DecisionRecord] = TypeAdapter(DecisionRecord)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")
