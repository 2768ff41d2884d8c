"""Between the Responses API and chat completions: a request becomes the chat completion every expert serves, and
the expert's assistant message becomes the Response's output items (and back, to keep a conversation going).

`instructions` are this request's alone (as OpenAI's: a response continued with `previous_response_id` does not
inherit them), so the conversation a stored response keeps holds the turns and their answers, not the system
message put first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.chat.protocol import ChatCompletionRequest
from gateway.errors import APIError, validation_message
from gateway.responses.protocol import (
    AssistantItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputImage,
    InputItem,
    InputText,
    ItemStatus,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTextPart,
    ResponsesRequest,
    SystemItem,
    TextFormatJSONObject,
    TextFormatJSONSchema,
    ToolChoiceFunction,
    UserItem,
)

Message = dict[str, Any]  # a chat message, as ChatCompletionRequest.wire_messages() writes it


@dataclass(frozen=True)
class Translated:
    request: ChatCompletionRequest
    conversation: list[Message]  # the earlier turns and this request's input, without the instructions


def to_chat(body: ResponsesRequest, earlier: list[Message]) -> Translated:
    """`body` as a chat completion, after the `earlier` conversation (a previous response's)."""
    conversation = [*earlier, *_messages(body.input)]
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": system + conversation,
        "stream": body.stream,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_completion_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls,
        "user": body.user,
        "tools": [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in body.tools or []
        ]
        or None,
        "tool_choice": _tool_choice(body.tool_choice),
        "response_format": _response_format(body),
    }
    try:
        request = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:  # what the fields alone could not tell: the earlier turns and these, too many
        message, _ = validation_message(exc.errors(include_input=False))
        raise APIError(
            400, f"The conversation cannot be sent to a model: {message}", param="input", code="invalid_request"
        ) from None
    return Translated(request, conversation)


def _tool_choice(choice: str | ToolChoiceFunction | None) -> str | dict[str, Any] | None:
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    form = body.text.format if body.text else None
    if isinstance(form, TextFormatJSONSchema):
        schema = form.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
        return {"type": "json_schema", "json_schema": schema}
    if isinstance(form, TextFormatJSONObject):
        return {"type": "json_object"}
    return None  # plain text: the expert's default


def _messages(given: str | list[InputItem]) -> list[Message]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[Message] = []
    for item in given:
        if isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            # A turn's calls (and the text before them) are one assistant message in chat.
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _text_parts(item.output)})
        elif isinstance(item, UserItem):
            content = item.content if isinstance(item.content, str) else [_user_part(p) for p in item.content]
            messages.append({"role": "user", "content": content})
        elif isinstance(item, SystemItem):
            messages.append({"role": item.role, "content": _text_parts(item.content)})
        elif isinstance(item, AssistantItem):
            messages.append({"role": "assistant", "content": _assistant_text(item)})
    return messages


def _text_parts(content: str | list[InputText]) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else [{"type": "text", "text": p.text} for p in content]


def _user_part(part: InputText | InputImage) -> dict[str, Any]:
    if isinstance(part, InputText):
        return {"type": "text", "text": part.text}
    image: dict[str, Any] = {"url": part.image_url}
    if part.detail in ("auto", "low", "high"):  # `original` has no chat equivalent: the expert's default
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _assistant_text(item: AssistantItem) -> str | list[dict[str, Any]]:
    if isinstance(item.content, str):
        return item.content
    return [
        {"type": "text", "text": p.text if isinstance(p, InputText | OutputTextPart) else p.refusal}
        for p in item.content
    ]


# -- the answer ----------------------------------------------------------------------------------------------
def response_id(decision_id: str) -> str:
    """A response's id: its decision's, so one names the other."""
    return f"resp_{decision_id}"


def item_id(kind: str, decision_id: str, index: int) -> str:
    """An output item's id: unique within its response, the same streamed or not."""
    return f"{kind}_{decision_id}_{index}"


def outcome(finish_reason: str | None) -> tuple[ItemStatus, IncompleteDetails | None]:
    """The response's status from the chat finish reason: cut short by the token limit or a filter, or done."""
    if finish_reason == "length":
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", IncompleteDetails(reason="content_filter")
    return "completed", None


def output_items(message: Message, decision_id: str, status: ItemStatus) -> list[OutputItem]:
    """An assistant message (text, tool calls or both) as output items: its text first, then each call."""
    calls = message.get("tool_calls") or []
    text = message.get("content")
    items: list[OutputItem] = []
    if text or not calls:
        text = text if isinstance(text, str) else "".join(p.get("text", "") for p in text or [])
        items.append(OutputMessage(id=item_id("msg", decision_id, 0), status=status, content=[OutputText(text=text)]))
    for call in calls:
        function = call.get("function") or {}
        index = len(items)
        items.append(
            OutputFunctionCall(
                id=item_id("fc", decision_id, index),
                call_id=call.get("id") or item_id("call", decision_id, index),
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
                status="completed",
            )
        )
    return items


def assistant_message(output: list[OutputItem]) -> Message:
    """Output items as the assistant message a later turn's conversation holds."""
    text = "".join(part.text for item in output if isinstance(item, OutputMessage) for part in item.content)
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in output
        if isinstance(item, OutputFunctionCall)
    ]
    message: Message = {"role": "assistant"}
    if text or not calls:
        message["content"] = text
    if calls:
        message["tool_calls"] = calls
    return message
