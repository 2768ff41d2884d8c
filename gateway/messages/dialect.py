"""Anthropic's Messages wire on the routed chat path (gateway/chat/dialect.py): the answer as a message, errors in
Anthropic's shape, the stream as Anthropic's events.

The stream: `message_start` (its usage 0 tokens: the expert reports its count only at the end), then for each
content block `content_block_start`, its deltas and `content_block_stop` (a text block for the text, a `tool_use`
block for each tool call, whose arguments go out as `input_json_delta` pieces as the expert streams them), then
`message_delta` with the stop reason and the usage, input tokens included (Anthropic's SDKs take its counts as
the totals), and `message_stop`. A failure once the stream has begun ends it with an `error` event.

Experts stream tool calls one after the other; a delta for a call whose block was closed still goes to that
block's index, where Anthropic's SDKs put it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.chat.dialect import StreamEnd, StreamItem
from gateway.errors import APIError, anthropic_error_body
from gateway.messages.protocol import (
    AnthropicMessage,
    AnthropicTextBlock,
    AnthropicToolUseBlock,
    AnthropicUsage,
    StopReason,
)

if TYPE_CHECKING:
    from gateway.decisions.record import DecisionRecord

# OpenAI's finish reasons as Anthropic's stop reasons; "stop" is the end of a turn, or a stop sequence if the
# expert names the one it met (vLLM's `stop_reason`).
_STOP_REASONS: dict[str | None, StopReason] = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class MessagesDialect:
    def __init__(self, stop_sequences: Sequence[str] = ()) -> None:
        self.stop_sequences = stop_sequences

    async def answer(self, completion: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content: list[AnthropicTextBlock | AnthropicToolUseBlock] = []
        if text := _text(message.get("content")):
            content.append(AnthropicTextBlock(text=text))
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            name = function.get("name") or ""
            content.append(
                AnthropicToolUseBlock(
                    id=call.get("id") or _call_id(i), name=name, input=_tool_input(name, function.get("arguments"))
                )
            )
        stop_reason, stop_sequence = self.stop(choice.get("finish_reason"), choice.get("stop_reason"))
        return AnthropicMessage(
            id=_message_id(record),
            model=record.chosen_expert or "",
            content=content,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=_usage(completion.get("usage")),
        ).model_dump()

    def error(self, error: APIError) -> dict[str, Any]:
        return anthropic_error_body(error.status, error.message)

    async def events(self, items: AsyncIterator[StreamItem], record: DecisionRecord) -> AsyncIterator[bytes]:
        start = AnthropicMessage(
            id=_message_id(record),
            model=record.chosen_expert or "",
            content=[],
            stop_reason=None,
            usage=AnthropicUsage(input_tokens=0, output_tokens=0),
        )
        yield _event("message_start", {"message": start.model_dump()})
        blocks = _Blocks()
        finish_reason, matched = None, None
        async for item in items:
            if isinstance(item, StreamEnd):
                for event in blocks.close():
                    yield event
                if item.error is not None:
                    yield _event("error", {"error": self.error(item.error)["error"]})
                    continue
                stop_reason, stop_sequence = self.stop(finish_reason, matched)
                usage = _usage(item.usage)
                yield _event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                        "usage": usage.model_dump(),
                    },
                )
                yield _event("message_stop", {})
                continue
            for choice in item["choices"]:
                delta = choice["delta"]
                if delta.get("content"):
                    for event in blocks.text(delta["content"]):
                        yield event
                for call in delta.get("tool_calls") or ():
                    for event in blocks.tool_call(call):
                        yield event
                finish_reason = choice.get("finish_reason") or finish_reason
                matched = choice.get("stop_reason") or matched

    def stop(self, finish_reason: str | None, matched: object) -> tuple[StopReason, str | None]:
        """Anthropic's `stop_reason` and `stop_sequence`, from OpenAI's finish reason and the stop string the expert
        says it met, if any."""
        if finish_reason == "stop" and isinstance(matched, str) and matched in self.stop_sequences:
            return "stop_sequence", matched
        return _STOP_REASONS.get(finish_reason, "end_turn"), None


class _Blocks:
    """The content blocks of a stream, one open at a time: the text, or one tool call (by its index in OpenAI's
    deltas)."""

    def __init__(self) -> None:
        self.started = 0
        self.open: tuple[str, int] | None = None  # ("text", 0) or ("tool", OpenAI's index of the call)
        self.tool_blocks: dict[int, int] = {}  # OpenAI's index of a call -> its block's index

    def text(self, text: str) -> list[bytes]:
        events = [] if self.open == ("text", 0) else self._start(("text", 0), {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*events, _event("content_block_delta", {"index": self.started - 1, "delta": delta})]

    def tool_call(self, call: Mapping[str, Any]) -> list[bytes]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        events: list[bytes] = []
        if position not in self.tool_blocks:
            block = {
                "type": "tool_use",
                "id": call.get("id") or _call_id(position),
                "name": function.get("name") or "",
                "input": {},
            }
            events = self._start(("tool", position), block)
            self.tool_blocks[position] = self.started - 1
        if arguments := function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(_event("content_block_delta", {"index": self.tool_blocks[position], "delta": delta}))
        return events

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", {"index": self.started - 1})]

    def _start(self, key: tuple[str, int], block: dict[str, Any]) -> list[bytes]:
        events = self.close()
        events.append(_event("content_block_start", {"index": self.started, "content_block": block}))
        self.open = key
        self.started += 1
        return events


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    payload = json.dumps({"type": kind, **data}, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def _message_id(record: DecisionRecord) -> str:
    return f"msg_{record.id}"


def _call_id(position: int) -> str:
    """An id for a tool call an expert sent without one (Anthropic's blocks need one)."""
    return f"toolu_{position}"


def _text(content: Any) -> str:
    """A message's text, whether an expert sent a string or text parts."""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


def _tool_input(name: str, arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Anthropic's `input` is; an expert's malformed ones are a 502."""
    if not arguments:
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise APIError(
            502,
            f"The expert called the tool `{name}` with arguments that are not a JSON object.",
            code="upstream_malformed",
        )
    return value


def _usage(usage: Mapping[str, Any] | None) -> AnthropicUsage:
    usage = usage or {}
    return AnthropicUsage(
        input_tokens=int(usage.get("prompt_tokens") or 0), output_tokens=int(usage.get("completion_tokens") or 0)
    )
