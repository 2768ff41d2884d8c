"""The OpenAI chat-completions wire schema: the request, validated, and the reply in OpenAI's shape (a completion,
its stream's chunks and server-sent events), shaped from what an expert sent (any OpenAI-compatible dict) and the
decision that chose it.

Every list and string a client controls is bounded, so that no body within the size limit costs more
than a few milliseconds to validate or can overflow a column of the decision log; numbers are strict
(no `true` for 1) and finite. gateway/bodies.py bounds what no field does: nesting depth, the number of
JSON values, and valid Unicode in every string.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from gateway.decisions.record import DecisionRecord

MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 256  # per message
MAX_TOOLS = 128  # OpenAI's own limits, from here down
MAX_STOP = 4
MAX_LOGIT_BIAS = 300
MAX_NAME = 64  # a message's or a function's name
MAX_ID = 256  # a tool call's id, `user`
MAX_MODEL = 200  # as long as the decision log's column

# Finite by construction (bodies.py refuses NaN and infinities); ints are not booleans (strict models).
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Name = Annotated[str, Field(max_length=MAX_NAME)]


class Wire(BaseModel):
    # Unknown fields are tolerated (SDKs add new ones often) but never forwarded upstream. Strict: `true` is no
    # number and `1` no string (a JSON integer still counts as a float).
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(Wire):
    type: Literal["text"]
    text: str


class ImageURL(Wire):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Wire):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Wire):
    data: str
    format: str


class AudioPart(Wire):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]
Content = str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
TextParts = Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)]


class FunctionCall(Wire):
    name: Name
    arguments: str


class ToolCall(Wire):
    id: str = Field(max_length=MAX_ID)
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Wire):
    role: Literal["system", "developer"]
    content: str | TextParts
    name: Name | None = None


class UserMessage(Wire):
    role: Literal["user"]
    content: Content
    name: Name | None = None


class AssistantMessage(Wire):
    role: Literal["assistant"]
    content: str | TextParts | None = None
    name: Name | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)

    @model_validator(mode="after")
    def _has_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(Wire):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str = Field(max_length=MAX_ID)


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDefinition(Wire):
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Wire):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(Wire):
    include_usage: bool = False


class ResponseFormat(Wire):
    model_config = ConfigDict(extra="allow")  # json_schema payloads are forwarded whole
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(Wire):
    model: str = Field(min_length=1, max_length=MAX_MODEL)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, lt=2**31)
    max_completion_tokens: int | None = Field(None, ge=1, lt=2**31)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    n: int | None = Field(None, ge=1, le=16)
    seed: Int64 | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[Annotated[str, Field(max_length=20)], Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=MAX_LOGIT_BIAS
    )
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=MAX_ID)

    # Sampling and tool fields forwarded to the expert as they came.
    FORWARDED: ClassVar[tuple[str, ...]] = (
        "temperature", "top_p", "stop", "n", "seed", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
        "parallel_tool_calls", "user",
    )

    def upstream_params(self) -> dict[str, Any]:
        params = self.model_dump(include=set(self.FORWARDED), exclude_none=True)
        # vLLM understands max_tokens; the newer name means the same thing.
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            params["max_tokens"] = limit
        return params

    def wire_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- the reply -----------------------------------------------------------------------------------------------
# What a message (or a stream's delta) may carry to the client; anything else an expert adds stays behind.
_REPLY_KEYS = {"role", "content", "tool_calls", "function_call", "refusal"}


def sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


REPLAY_FIRST: dict[str, Any] = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


async def replay(completion: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """A complete answer (cached, voted) as the upstream chunks that would have carried it (after `REPLAY_FIRST`)."""
    choice = completion["choices"][0]
    delta: dict[str, Any] = {"content": choice["message"].get("content") or ""}
    if tool_calls := choice["message"].get("tool_calls"):  # a stream's deltas number their calls
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
    yield {"choices": [{"index": 0, "delta": delta}]}
    yield {"choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]}
    if completion.get("usage"):
        yield {"choices": [], "usage": completion["usage"]}


def openai_completion(payload: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
    choices = [
        {
            "index": c.get("index", i),
            "message": {k: v for k, v in c.get("message", {}).items() if k in _REPLY_KEYS},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
            **_stop_reason(c),
        }
        for i, c in enumerate(payload.get("choices", []))
    ]
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": payload.get("created") or int(time.time()),
        "model": record.chosen_expert,
        "choices": choices,
        "usage": openai_usage(payload.get("usage")),
        "system_fingerprint": payload.get("system_fingerprint"),
    }


def _stop_reason(choice: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's extension: the stop string (or token id) the answer ended on, kept for the client as vLLM sends it, and
    for Anthropic's `stop_sequence` (gateway/messages/dialect.py)."""
    return {"stop_reason": choice["stop_reason"]} if choice.get("stop_reason") is not None else {}


def openai_usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    if not usage:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(usage.get(k) or 0) for k in keys}


def openai_chunk(chunk: Mapping[str, Any], stream_id: str, model: str) -> dict[str, Any] | None:
    """An upstream chunk in OpenAI's shape; None for chunks that carry only usage."""
    choices = [
        {
            "index": c.get("index", 0),
            "delta": {k: v for k, v in (c.get("delta") or {}).items() if k in _REPLY_KEYS and v is not None},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
            **_stop_reason(c),
        }
        for c in chunk.get("choices", [])
        if c.get("delta") or c.get("finish_reason")
    ]
    if not choices:
        return None
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": chunk.get("created") or int(time.time()),
        "model": model,
        "choices": choices,
    }


def usage_chunk(stream_id: str, model: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": openai_usage(usage),
    }
