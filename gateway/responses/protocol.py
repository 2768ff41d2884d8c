"""OpenAI's Responses wire schema: the request, validated, and the Response object it is answered with.

Bounded as the chat completion's request is (gateway/chat/protocol.py, whose limits it reuses): every list and
string a client controls has a bound, numbers are strict and finite. What the gateway cannot serve (tools OpenAI
hosts, items other than messages and function calls, background runs) is refused with a 400 that says so, not
ignored: an answer that silently skipped a web search would look like one that made it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from gateway.chat.protocol import MAX_CONTENT_PARTS, MAX_ID, MAX_MESSAGES, MAX_MODEL, MAX_TOOLS, Name, Wire

MAX_METADATA = 16  # OpenAI's limits on `metadata`: pairs, key and value lengths
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", message)


# -- the request -----------------------------------------------------------------------------------------------
class InputText(Wire):
    type: Literal["input_text"]
    text: str


class InputImage(Wire):
    type: Literal["input_image"]
    image_url: str | None = None  # a URL or a data: URL
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None

    @model_validator(mode="after")
    def _by_url(self) -> InputImage:
        if self.image_url is None:
            raise _unsupported("an input_image needs an image_url; the gateway keeps no files to refer to by file_id")
        return self


class OutputTextPart(Wire):
    """An earlier answer's text, in an assistant message sent back."""

    type: Literal["output_text"]
    text: str


class RefusalPart(Wire):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[InputText | InputImage, Field(discriminator="type")]
AssistantPart = Annotated[OutputTextPart | InputText | RefusalPart, Field(discriminator="type")]


class UserItem(Wire):
    type: Literal["message"] = "message"
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(max_length=MAX_CONTENT_PARTS)]


class SystemItem(Wire):
    type: Literal["message"] = "message"
    role: Literal["system", "developer"]
    content: str | Annotated[list[InputText], Field(max_length=MAX_CONTENT_PARTS)]


class AssistantItem(Wire):
    type: Literal["message"] = "message"
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], Field(max_length=MAX_CONTENT_PARTS)]


class FunctionCallItem(Wire):
    """A function call the model made earlier, sent back with its output."""

    type: Literal["function_call"]
    call_id: str = Field(max_length=MAX_ID)
    name: Name
    arguments: str


class FunctionCallOutputItem(Wire):
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=MAX_ID)
    output: str | Annotated[list[InputText], Field(max_length=MAX_CONTENT_PARTS)]


_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_CALL_ITEMS = ("function_call", "function_call_output")


def _item_kind(value: Any) -> str | None:
    """Which item model reads `value`: messages by their role; None (a 400) for any other item."""
    if isinstance(value, BaseModel):  # an item already read, being serialised
        value = {"type": getattr(value, "type", None), "role": getattr(value, "role", None)}
    if not isinstance(value, dict):
        return None
    kind, role = value.get("type", "message"), value.get("role")
    if kind == "message":
        return _ROLES.get(role) if isinstance(role, str) else None
    return kind if kind in _CALL_ITEMS else None


InputItem = Annotated[
    Annotated[UserItem, Tag("user")]
    | Annotated[SystemItem, Tag("system")]
    | Annotated[AssistantItem, Tag("assistant")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_kind,
        custom_error_type="unsupported",
        custom_error_message="an input item must be a message (role user, system, developer or assistant), a "
        "function_call or a function_call_output; other item types are not supported",
    ),
]


def _function_only(what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise _unsupported(f"the gateway calls function {what} only; `{value.get('type')}` is not supported")
        return value

    return BeforeValidator(check)


class FunctionTool(Wire):
    type: Literal["function"]
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(Wire):
    type: Literal["function"]
    name: Name


ToolChoice = Annotated[
    Literal["auto", "none", "required"] | ToolChoiceFunction, _function_only("tools (a tool_choice of type function)")
]


class TextFormatText(Wire):
    type: Literal["text"] = "text"


class TextFormatJSONObject(Wire):
    type: Literal["json_object"]


class TextFormatJSONSchema(Wire):
    type: Literal["json_schema"]
    name: Name
    json_schema: dict[str, Any] = Field(alias="schema")  # `schema` is a BaseModel method
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")]


class TextConfig(Wire):
    format: TextFormat = Field(default_factory=TextFormatText)
    verbosity: Literal["low", "medium", "high"] | None = None


def _not_supported(why: str) -> BeforeValidator:
    def refuse(value: Any) -> Any:
        if value is not None and value is not False:
            raise _unsupported(why)
        return value

    return BeforeValidator(refuse)


class ResponsesRequest(Wire):
    model: str = Field(min_length=1, max_length=MAX_MODEL)
    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, lt=2**31)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[Annotated[FunctionTool, _function_only("tools")]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: (
        dict[Annotated[str, Field(max_length=MAX_METADATA_KEY)], Annotated[str, Field(max_length=MAX_METADATA_VALUE)]]
        | None
    ) = Field(None, max_length=MAX_METADATA)
    user: str | None = Field(None, max_length=MAX_ID)
    stream: bool = False
    store: bool = True  # as OpenAI's: kept unless asked not to be
    previous_response_id: str | None = Field(None, max_length=MAX_ID)
    background: Annotated[
        bool | None, _not_supported("background responses are not supported; leave background unset or false")
    ] = None
    conversation: Annotated[
        Any, _not_supported("conversations are not supported; chain responses with previous_response_id")
    ] = None
    prompt: Annotated[Any, _not_supported("stored prompt templates are not supported; send the input itself")] = None


# -- the reply -----------------------------------------------------------------------------------------------
# Built by the gateway from an expert's answer, never validated from a client: no bounds.
class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """A Response as OpenAI's SDK reads it (`output_text` is the SDK's own property, not a field), with the
    request's parameters echoed back."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: Usage | None = None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    top_p: float | None
    text: TextConfig
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceFunction
    tools: list[FunctionTool]
    user: str | None
    background: bool = False


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
