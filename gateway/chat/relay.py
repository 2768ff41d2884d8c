"""Relaying an expert's stream to the client, once its first chunk is in hand: OpenAI chunks, then a `StreamEnd`,
which the endpoint's dialect turns into its protocol's events (gateway/chat/dialect.py).

Bytes have reached the client from then on, so a failure can no longer fall back: the stream ends with an error
event. The record is settled as the stream ends, however it ends (see gateway/chat/serving.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive

from experts.client import ExpertFailure
from experts.pool import Chunks, ExpertCall, ExpertPool, ms_since
from gateway.chat.cache import ResponseCache
from gateway.chat.dialect import Dialect, StreamEnd, StreamItem
from gateway.chat.protocol import openai_chunk, openai_usage
from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError


@dataclass
class OpenStream:
    call: ExpertCall | None  # None when the answer was complete before streaming (the cache, a vote, a cascade)
    chunks: Chunks
    first: dict[str, Any]
    started: float
    client_gone: bool = False  # the client hung up mid-stream (see RelayResponse)


class RelayResponse(StreamingResponse):
    """The SSE relay of an open stream. A client hanging up and the shutdown drain running out both
    cut the stream by cancelling it; only the hang-up comes with `http.disconnect`, noted here."""

    def __init__(self, opened: OpenStream, content: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.opened = opened

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)  # returns only on http.disconnect (else it is cancelled)
        self.opened.client_gone = True


def uncancel() -> None:
    """Take back the shutdown drain's cancel, so the answer saying so can still go out."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def relay(
    opened: OpenStream,
    record: DecisionRecord,
    *,
    pool: ExpertPool,
    cache: ResponseCache | None,
    done: Callable[[DecisionRecord], None],
) -> AsyncGenerator[StreamItem, None]:
    """The stream's chunks, then its end; `cache` (when the request may use it) keeps a complete plain-text answer;
    `done` records the decision, whatever happens."""
    call, started = opened.call, opened.started
    stream_id = f"chatcmpl-{record.id}"
    usage: dict[str, Any] | None = None
    text: list[str] = []  # the answer as it streams, cached once the stream is complete
    cacheable = True
    finish_reason = None
    record.settle("client_disconnected", 499)  # until the stream completes
    try:
        chunk: dict[str, Any] | None = opened.first
        while chunk is not None:
            usage = chunk.get("usage") or usage
            event = openai_chunk(chunk, stream_id, record.chosen_expert or "")
            if event is not None:
                if record.ttft_ms is None:
                    record.ttft_ms = ms_since(started)
                for choice in event["choices"]:
                    delta = choice["delta"]
                    cacheable &= choice["index"] == 0 and "tool_calls" not in delta
                    text.append(delta.get("content") or "")
                    finish_reason = choice["finish_reason"] or finish_reason
                yield event
            chunk = await anext(opened.chunks, None)
        yield StreamEnd(usage)
        record.settle("ok", 200)
        record.keep_answer("".join(text))
        if call is not None:
            call.status = "ok"
            if cache is not None and cacheable:
                message = {"role": "assistant", "content": "".join(text)}
                await cache.store(record, {"model": record.chosen_expert, "usage": openai_usage(usage),
                                           "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]})
    except ExpertFailure as failure:
        if call is not None:
            await pool.broke(call, failure)
        record.settle("stream_error", 502, str(failure))
        yield StreamEnd(usage, APIError(502, f"The expert failed mid-stream: {failure.kind}.", code="stream_interrupted"))
    except asyncio.CancelledError:  # cancelled while it waited for the expert
        if record.status != "client_disconnected" or opened.client_gone:
            raise
        # Not the client leaving: uvicorn cancelled the request, the shutdown drain ran out. The client is
        # still there, so the stream ends as any broken stream does, with an error event it can act on.
        record.settle("shutdown", 503)
        uncancel()
        yield StreamEnd(usage, APIError(503, "The gateway is shutting down; retry the request.", code="shutting_down"))
    except GeneratorExit:  # closed at a yield: the response is gone, nothing more can be sent
        if record.status == "client_disconnected" and not opened.client_gone:
            record.settle("shutdown", 503)
        raise
    finally:
        await opened.chunks.aclose()
        if call is not None:
            if call.status == "pending":
                call.status = "cancelled"
            call.latency_ms, call.ttft_ms = ms_since(started), record.ttft_ms
            call.took(usage)
            record.upstream_ms = ms_since(started)
            if usage:
                record.took(usage)
        done(record)


async def encoded(
    dialect: Dialect, items: AsyncGenerator[StreamItem, None], record: DecisionRecord
) -> AsyncIterator[bytes]:
    """The stream in the endpoint's protocol. Closing it (the client gone) closes the relay, whose `finally` records
    the decision."""
    async with contextlib.aclosing(items), contextlib.aclosing(dialect.events(items, record)) as events:
        async for data in events:
            yield data
