"""What an endpoint's protocol adds to the routed chat path: how an answer, an error and a stream look on its wire.

Every routed endpoint (chat completions, Responses, Anthropic Messages, legacy completions) translates its request
into a `ChatCompletionRequest` and hands it, with its dialect, to gateway/chat/serving.py: one path routes, calls
the experts with fallback, caches and records the decision; the dialect only shapes what goes back. Its input is
always OpenAI's chat shape: the completion the chat endpoint would return, and the stream's chunks as it would send
them (`openai_chunk`), then one `StreamEnd`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.chat.protocol import sse, usage_chunk
from gateway.errors import APIError

if TYPE_CHECKING:
    from gateway.decisions.record import DecisionRecord


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a relayed stream: its usage as the expert reported it, and what broke it, if anything
    (bytes have been sent by then, so a failure ends the stream with the protocol's error event)."""

    usage: dict[str, Any] | None
    error: APIError | None = None


StreamItem = dict[str, Any] | StreamEnd  # an OpenAI chat.completion.chunk, or the end


class Dialect(Protocol):
    """An endpoint's wire, one object per request (it may hold what the request asked, to echo it back)."""

    async def answer(self, completion: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
        """The body of a whole answer, from the OpenAI chat completion."""
        ...

    def error(self, error: APIError) -> dict[str, Any]:
        """The body of an error reply."""
        ...

    def events(self, items: AsyncIterator[StreamItem], record: DecisionRecord) -> AsyncIterator[bytes]:
        """The stream's bytes (server-sent events), from the relayed chunks; it must consume `items` to the end,
        which settles the record."""
        ...


class ChatDialect:
    """OpenAI's chat completions: the relayed chunks as they are, then `[DONE]`."""

    def __init__(self, include_usage: bool = False) -> None:
        self.include_usage = include_usage

    async def answer(self, completion: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
        return completion

    def error(self, error: APIError) -> dict[str, Any]:
        return error.body()

    async def events(self, items: AsyncIterator[StreamItem], record: DecisionRecord) -> AsyncIterator[bytes]:
        async for item in items:
            if not isinstance(item, StreamEnd):
                yield sse(item)
                continue
            if item.error is not None:
                yield sse(item.error.body())
            elif self.include_usage and item.usage:
                yield sse(usage_chunk(f"chatcmpl-{record.id}", record.chosen_expert or "", item.usage))
            yield sse("[DONE]")
