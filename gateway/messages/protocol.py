"""Anthropic's Messages wire schema (docs.anthropic.com, "Messages"): the request, validated, and the answer.

What the gateway serves of it: text, image, tool_use and tool_result blocks, custom tools, `tool_choice`,
sampling, `stop_sequences`, `metadata.user_id` and `stream`. The bounds are the chat endpoint's (a Messages
request becomes a chat completion, gateway/messages/translate.py), so no body costs more to check. Unknown fields
are ignored, as Anthropic's SDKs add new ones often; what Anthropic defines but the gateway cannot do (extended
thinking, server tools, MCP servers, containers, documents) is refused with a 400 that says so rather than
silently dropped. `top_k` is accepted and not forwarded: chat completions have no such field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.chat.protocol import MAX_CONTENT_PARTS, MAX_ID, MAX_MESSAGES, MAX_MODEL, MAX_NAME, MAX_STOP, MAX_TOOLS

# Top-level fields Anthropic defines for features that run on its servers.
_SERVER_SIDE = {"mcp_servers": "MCP servers", "container": "code execution containers"}


class Wire(BaseModel):
    # As the chat protocol's: unknown fields ignored, never forwarded; strict types.
    model_config = ConfigDict(extra="ignore", strict=True)


# -- content blocks --------------------------------------------------------------------------------------------
class AnthropicTextBlockParam(Wire):
    type: Literal["text"]
    text: str


class AnthropicBase64Source(Wire):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class AnthropicURLSource(Wire):
    type: Literal["url"]
    url: str


class AnthropicImageBlockParam(Wire):
    type: Literal["image"]
    source: Annotated[AnthropicBase64Source | AnthropicURLSource, Discriminator("type")]


class AnthropicToolUseBlockParam(Wire):
    type: Literal["tool_use"]
    id: str = Field(max_length=MAX_ID)
    name: str = Field(max_length=MAX_NAME)
    input: dict[str, Any]


class AnthropicToolResultBlockParam(Wire):
    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=MAX_ID)
    content: str | Annotated[list[AnthropicTextBlockParam], Field(max_length=MAX_CONTENT_PARTS)] = ""
    is_error: bool = False


def _blocks_of(role: str, allowed: tuple[str, ...]) -> BeforeValidator:
    """Refuses, by name, a block this role cannot carry here (Anthropic's others, such as `thinking` or `document`,
    included), before the union would answer with its list of tags."""

    def check(value: Any) -> Any:
        if isinstance(value, list):
            for i, block in enumerate(value):
                kind = block.get("type") if isinstance(block, dict) else None
                if isinstance(kind, str) and kind not in allowed:
                    raise PydanticCustomError(
                        "unsupported_block",
                        "content block {index} is a `{kind}` block, which this gateway does not take in {role} "
                        "messages (it takes {allowed})",
                        {"index": i, "kind": kind[:40], "role": role, "allowed": ", ".join(allowed)},
                    )
        return value

    return BeforeValidator(check)


UserBlock = Annotated[
    AnthropicTextBlockParam | AnthropicImageBlockParam | AnthropicToolResultBlockParam, Discriminator("type")
]
AssistantBlock = Annotated[AnthropicTextBlockParam | AnthropicToolUseBlockParam, Discriminator("type")]


class AnthropicUserMessage(Wire):
    role: Literal["user"]
    content: (
        str
        | Annotated[
            list[UserBlock], Field(max_length=MAX_CONTENT_PARTS), _blocks_of("user", ("text", "image", "tool_result"))
        ]
    )


class AnthropicAssistantMessage(Wire):
    role: Literal["assistant"]
    content: (
        str
        | Annotated[
            list[AssistantBlock], Field(max_length=MAX_CONTENT_PARTS), _blocks_of("assistant", ("text", "tool_use"))
        ]
    )


AnthropicMessageParam = Annotated[AnthropicUserMessage | AnthropicAssistantMessage, Discriminator("role")]


# -- tools -----------------------------------------------------------------------------------------------------
def _custom_tool(value: Any) -> Any:
    """Server tools (web search, bash, code execution...) carry a versioned `type`; only custom tools run here."""
    if isinstance(value, dict) and value.get("type") not in (None, "custom"):
        raise PydanticCustomError(
            "unsupported_tool",
            "server tools such as `{kind}` are not supported by this gateway: give custom tools (a name and an "
            "input_schema)",
            {"kind": str(value.get("type"))[:60]},
        )
    return value


class AnthropicTool(Wire):
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str | None = None
    input_schema: dict[str, Any]


class AnthropicToolChoiceAuto(Wire):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class AnthropicToolChoiceAny(Wire):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class AnthropicToolChoiceTool(Wire):
    type: Literal["tool"]
    name: str = Field(max_length=MAX_NAME)
    disable_parallel_tool_use: bool = False


class AnthropicToolChoiceNone(Wire):
    type: Literal["none"]


AnthropicToolChoice = Annotated[
    AnthropicToolChoiceAuto | AnthropicToolChoiceAny | AnthropicToolChoiceTool | AnthropicToolChoiceNone,
    Discriminator("type"),
]


class AnthropicMetadata(Wire):
    user_id: str | None = Field(None, max_length=MAX_ID)


# -- requests --------------------------------------------------------------------------------------------------
class AnthropicCountTokensRequest(Wire):
    """`POST /v1/messages/count_tokens`: the conversation alone; also what a Messages request holds."""

    model: str = Field(min_length=1, max_length=MAX_MODEL)
    system: str | Annotated[list[AnthropicTextBlockParam], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    messages: list[AnthropicMessageParam] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: list[Annotated[AnthropicTool, BeforeValidator(_custom_tool)]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: AnthropicToolChoice | None = None

    @model_validator(mode="before")
    @classmethod
    def _runs_here(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for field, what in _SERVER_SIDE.items():
            if data.get(field) is not None:
                raise PydanticCustomError(
                    "unsupported", "`{field}`: {what} are not supported by this gateway", {"field": field, "what": what}
                )
        thinking = data.get("thinking")
        if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
            raise PydanticCustomError(
                "unsupported", "`thinking`: extended thinking is not supported by this gateway (only type `disabled`)"
            )
        return data

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> Self:
        if self.tool_choice is None:
            return self
        names = {tool.name for tool in self.tools or ()}
        if not names:
            raise PydanticCustomError("tool_choice", "`tool_choice` needs `tools`")
        if isinstance(self.tool_choice, AnthropicToolChoiceTool) and self.tool_choice.name not in names:
            raise PydanticCustomError(
                "tool_choice",
                "`tool_choice` names `{name}`, which is not among `tools`",
                {"name": self.tool_choice.name},
            )
        return self


class AnthropicMessagesRequest(AnthropicCountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1, lt=2**31)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, lt=2**31)
    metadata: AnthropicMetadata | None = None
    stream: bool = False


# -- answers ---------------------------------------------------------------------------------------------------
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class AnthropicTextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class AnthropicToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class AnthropicMessage(BaseModel):
    """The answer; `model` is the expert that gave it."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[AnthropicTextBlock | AnthropicToolUseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class AnthropicCountTokensResponse(BaseModel):
    input_tokens: int
