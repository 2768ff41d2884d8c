"""The OpenAI chat-completions wire schema (the request side is validated; replies are shaped from upstream).

Every list and string a client controls is bounded, so that no body within the size limit costs more
than a few milliseconds to validate or can overflow a column of the decision log; numbers are strict
(no `true` for 1) and finite. gateway/bodies.py bounds what no field does: nesting depth, the number of
JSON values, and valid Unicode in every string.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class _Wire(BaseModel):
    # Unknown fields are tolerated (SDKs add new ones often) but never forwarded upstream. Strict: `true` is no
    # number and `1` no string (a JSON integer still counts as a float).
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class ImageURL(_Wire):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Wire):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Wire):
    data: str
    format: str


class AudioPart(_Wire):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]
Content = str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
TextParts = Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)]


class FunctionCall(_Wire):
    name: Name
    arguments: str


class ToolCall(_Wire):
    id: str = Field(max_length=MAX_ID)
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Wire):
    role: Literal["system", "developer"]
    content: str | TextParts
    name: Name | None = None


class UserMessage(_Wire):
    role: Literal["user"]
    content: Content
    name: Name | None = None


class AssistantMessage(_Wire):
    role: Literal["assistant"]
    content: str | TextParts | None = None
    name: Name | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)

    @model_validator(mode="after")
    def _has_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Wire):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str = Field(max_length=MAX_ID)


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDefinition(_Wire):
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(_Wire):
    include_usage: bool = False


class ResponseFormat(_Wire):
    model_config = ConfigDict(extra="allow")  # json_schema payloads are forwarded whole
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_Wire):
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
