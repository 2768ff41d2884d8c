"""A Messages request as the chat completion that chat serving routes (gateway/chat/dialect.py says why).

- `system` (a string or text blocks) becomes the first message, a system one.
- A user message's `tool_result` blocks become `tool` messages, one each, ahead of its other blocks (chat wants a
  tool's result right after the call): text as text parts, an image's base64 source as a `data:` URL, a url source
  as it is. A result marked `is_error` says so in its text, as chat's tool messages have no flag for it.
- An assistant message's text blocks become its content, its `tool_use` blocks its `tool_calls` (the input as
  JSON arguments).
- `tools` become function tools (`input_schema` their parameters); `tool_choice` auto / any / tool / none becomes
  "auto" / "required" / the named function / "none", and `disable_parallel_tool_use` `parallel_tool_calls: false`.
- `max_tokens`, `stop_sequences` (as `stop`), `temperature`, `top_p`, `metadata.user_id` (as `user`) and `stream`
  carry over.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from gateway.chat.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    Message,
    SystemMessage,
    TextPart,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from gateway.errors import APIError, validation_message
from gateway.messages.protocol import (
    AnthropicAssistantMessage,
    AnthropicBase64Source,
    AnthropicCountTokensRequest,
    AnthropicImageBlockParam,
    AnthropicMessagesRequest,
    AnthropicTextBlockParam,
    AnthropicTool,
    AnthropicToolChoice,
    AnthropicToolChoiceTool,
    AnthropicToolResultBlockParam,
    AnthropicToolUseBlockParam,
)

TOOL_ERROR = "Error:"  # what a tool result marked `is_error` starts with


def chat_request(body: AnthropicMessagesRequest) -> ChatCompletionRequest:
    """The chat completion to route; a 400 when the conversation has no such form (more chat messages, once every
    tool result is one, than chat takes)."""
    choice = body.tool_choice
    parallel = getattr(choice, "disable_parallel_tool_use", False)
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=chat_messages(body),
            max_tokens=body.max_tokens,
            stop=body.stop_sequences,
            temperature=body.temperature,
            top_p=body.top_p,
            tools=chat_tools(body.tools),
            tool_choice=_tool_choice(choice),
            parallel_tool_calls=False if parallel else None,
            user=body.metadata.user_id if body.metadata else None,
            stream=body.stream,
        )
    except ValidationError as exc:
        message, param = validation_message(exc.errors(include_input=False))
        raise APIError(
            400,
            f"{message.rstrip('.')}, once translated to chat messages (a tool result is one).",
            param=param,
            code="invalid_request",
        ) from None


def chat_messages(body: AnthropicCountTokensRequest) -> list[Message]:
    messages: list[Message] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else [_text(block) for block in body.system]
        messages.append(SystemMessage(role="system", content=system))
    for message in body.messages:
        if isinstance(message, AnthropicAssistantMessage):
            messages.append(_assistant(message.content))
        else:
            messages.extend(_user(message.content))
    return messages


def chat_tools(tools: list[AnthropicTool] | None) -> list[Tool] | None:
    if not tools:
        return None
    return [
        Tool(
            type="function",
            function=FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema),
        )
        for tool in tools
    ]


def _tool_choice(choice: AnthropicToolChoice | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, AnthropicToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _text(block: AnthropicTextBlockParam) -> TextPart:
    return TextPart(type="text", text=block.text)


def _user(
    content: str | list[AnthropicTextBlockParam | AnthropicImageBlockParam | AnthropicToolResultBlockParam],
) -> list[Message]:
    if isinstance(content, str):
        return [UserMessage(role="user", content=content)]
    results: list[Message] = [
        ToolMessage(role="tool", tool_call_id=block.tool_use_id, content=_tool_output(block))
        for block in content
        if isinstance(block, AnthropicToolResultBlockParam)
    ]
    parts = [
        _text(block) if isinstance(block, AnthropicTextBlockParam) else _image(block)
        for block in content
        if not isinstance(block, AnthropicToolResultBlockParam)
    ]
    if parts or not results:
        results.append(UserMessage(role="user", content=parts))
    return results


def _image(block: AnthropicImageBlockParam) -> ImagePart:
    source = block.source
    url = f"data:{source.media_type};base64,{source.data}" if isinstance(source, AnthropicBase64Source) else source.url
    return ImagePart(type="image_url", image_url=ImageURL(url=url))


def _tool_output(block: AnthropicToolResultBlockParam) -> str | list[TextPart]:
    if isinstance(block.content, str):
        return f"{TOOL_ERROR} {block.content}" if block.is_error else block.content
    parts = [_text(part) for part in block.content]
    return [TextPart(type="text", text=TOOL_ERROR), *parts] if block.is_error else parts


def _assistant(content: str | list[AnthropicTextBlockParam | AnthropicToolUseBlockParam]) -> AssistantMessage:
    if isinstance(content, str):
        return AssistantMessage(role="assistant", content=content)
    texts = [_text(block) for block in content if isinstance(block, AnthropicTextBlockParam)]
    calls = [
        ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=json.dumps(block.input)))
        for block in content
        if isinstance(block, AnthropicToolUseBlockParam)
    ]
    # Chat wants content or tool calls: an empty turn keeps its (empty) content.
    return AssistantMessage(role="assistant", content=texts if texts or not calls else None, tool_calls=calls or None)
