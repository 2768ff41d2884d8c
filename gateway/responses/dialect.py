"""The Responses API's wire on the routed chat path (gateway/chat/dialect.py): a Response object for a whole
answer, and for a stream the Responses event sequence, each event `event: <type>` with its JSON (type and
sequence_number inside):

    response.created, response.in_progress,
    per output item: response.output_item.added, then for a message response.content_part.added,
      response.output_text.delta..., response.output_text.done, response.content_part.done; for a function call
      response.function_call_arguments.delta..., response.function_call_arguments.done; then
      response.output_item.done,
    response.completed (response.incomplete when cut by max_output_tokens), with the whole Response;
    or, when the expert fails mid-stream, `error` then response.failed.

A response the client asked to store is written before its answer (or its last event) leaves, so a request that
continues it at once finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.chat.dialect import StreamEnd, StreamItem
from gateway.chat.protocol import openai_usage
from gateway.errors import APIError
from gateway.responses.protocol import (
    IncompleteDetails,
    ItemStatus,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseStatus,
    TextConfig,
    Usage,
)
from gateway.responses.store import ResponseStore, StoredResponse
from gateway.responses.translate import Message, assistant_message, item_id, outcome, output_items, response_id

if TYPE_CHECKING:
    from gateway.decisions.record import DecisionRecord

log = logging.getLogger(__name__)


class ResponsesDialect:
    """One request's: what it asked is echoed in its Response; `store` keeps the Response when the client asked."""

    def __init__(self, body: ResponsesRequest, conversation: list[Message], store: ResponseStore | None) -> None:
        self.body = body
        self.conversation = conversation
        self.store = store

    async def answer(self, completion: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
        choice = (completion.get("choices") or [{}])[0]
        status, incomplete = outcome(choice.get("finish_reason"))
        output = output_items(choice.get("message") or {}, record.id, status)
        return await self._kept(self._response(record, status, output, completion.get("usage"), incomplete), record)

    def error(self, error: APIError) -> dict[str, Any]:
        return error.body()

    async def events(self, items: AsyncIterator[StreamItem], record: DecisionRecord) -> AsyncIterator[bytes]:
        stream = _Events(record.id)
        started = _wire(self._response(record, "in_progress", [], None))
        yield stream.event("response.created", response=started)
        yield stream.event("response.in_progress", response=started)
        async for item in items:
            if not isinstance(item, StreamEnd):
                for data in stream.chunk(item):
                    yield data
            elif item.error is not None:
                stream.cut()
                error = item.error
                yield stream.event("error", code=error.code, message=error.message, param=error.param)
                failed = self._response(
                    record,
                    "failed",
                    stream.output,
                    item.usage,
                    error=ResponseError(code="server_error", message=error.message),
                )
                yield stream.event("response.failed", response=_wire(failed))
            else:
                status, incomplete = outcome(stream.finish_reason)
                for data in stream.finish(status):
                    yield data
                done = self._response(record, status, stream.output, item.usage, incomplete)
                yield stream.event(f"response.{status}", response=await self._kept(done, record))

    def _response(
        self,
        record: DecisionRecord,
        status: ResponseStatus,
        output: list[OutputItem],
        usage: dict[str, Any] | None,
        incomplete: IncompleteDetails | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        body = self.body
        counts = openai_usage(usage)
        return ResponseObject(
            id=response_id(record.id),
            created_at=int(record.created_at.timestamp()),
            status=status,
            error=error,
            incomplete_details=incomplete,
            model=record.chosen_expert or body.model,
            output=output,
            usage=None
            if counts is None
            else Usage(
                input_tokens=counts["prompt_tokens"],
                output_tokens=counts["completion_tokens"],
                total_tokens=counts["total_tokens"],
            ),
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=body.metadata or {},
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            store=body.store,
            temperature=body.temperature,
            top_p=body.top_p,
            text=body.text or TextConfig(),
            tool_choice=body.tool_choice or "auto",
            tools=body.tools or [],
            user=body.user,
        )

    async def _kept(self, response: ResponseObject, record: DecisionRecord) -> dict[str, Any]:
        """The Response on the wire, stored first when asked. A store that fails costs the stored copy, not the
        answer the expert was paid for: logged, and the answer still goes out."""
        wire = _wire(response)
        if self.store is not None:
            stored = StoredResponse(
                response.id,
                record.api_key_id,
                record.tenant,
                [*self.conversation, assistant_message(response.output)],
                wire,
            )
            try:
                await asyncio.to_thread(self.store.put, stored)
            except SQLAlchemyError as exc:
                log.warning("responses: %s not stored, the database failed (%s)", response.id, type(exc).__name__)
        return wire


def _wire(response: ResponseObject) -> dict[str, Any]:
    return response.model_dump(mode="json", by_alias=True)


class _Events:
    """A stream's output items as they build up from the relayed chunks, and the events that tell it."""

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        self.sequence = 0
        self.output: list[OutputItem] = []
        self.open: OutputItem | None = None  # the last of `output`, while deltas still reach it
        self.call_index: int | None = None  # the open function call's index among the chunks' tool calls
        self.finish_reason: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **fields}, separators=(",", ":"))
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            self.finish_reason = choice["finish_reason"] or self.finish_reason
        return events

    def finish(self, status: ItemStatus) -> list[bytes]:
        """The last item closed; an answer with neither text nor calls is one empty message, as unstreamed."""
        events = [] if self.output else self._text("")
        return events + self._close(status)

    def cut(self) -> None:
        """The stream broke: the item it was building stays as far as it got."""
        if self.open is not None:
            self.open.status = "incomplete"
            self.open = None

    def _text(self, piece: str) -> list[bytes]:
        events: list[bytes] = []
        if not isinstance(self.open, OutputMessage):
            events += self._close("completed")
            message = OutputMessage(
                id=item_id("msg", self.decision_id, len(self.output)), status="in_progress", content=[]
            )
            events += self._add(message)
            message.content.append(OutputText(text=""))
            events.append(
                self.event(
                    "response.content_part.added",
                    item_id=message.id,
                    output_index=self._index,
                    content_index=0,
                    part=message.content[0].model_dump(),
                )
            )
        assert isinstance(self.open, OutputMessage)
        if piece:
            self.open.content[0].text += piece
            events.append(
                self.event(
                    "response.output_text.delta",
                    item_id=self.open.id,
                    output_index=self._index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            )
        return events

    def _call(self, delta: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        function = delta.get("function") or {}
        index = delta.get("index", 0)
        if not isinstance(self.open, OutputFunctionCall) or index != self.call_index:
            events += self._close("completed")
            n = len(self.output)
            events += self._add(
                OutputFunctionCall(
                    id=item_id("fc", self.decision_id, n),
                    call_id=delta.get("id") or item_id("call", self.decision_id, n),
                    name=function.get("name") or "",
                    arguments="",
                    status="in_progress",
                )
            )
            self.call_index = index
        assert isinstance(self.open, OutputFunctionCall)
        if arguments := function.get("arguments"):
            self.open.arguments += arguments
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=self.open.id,
                    output_index=self._index,
                    delta=arguments,
                )
            )
        return events

    @property
    def _index(self) -> int:
        return len(self.output) - 1

    def _add(self, item: OutputItem) -> list[bytes]:
        self.output.append(item)
        self.open = item
        return [self.event("response.output_item.added", output_index=self._index, item=item.model_dump())]

    def _close(self, status: ItemStatus) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        item.status = status
        index = self._index
        if isinstance(item, OutputMessage):
            part = item.content[0]
            events = [
                self.event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=part.text,
                    logprobs=[],
                ),
                self.event(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=part.model_dump(),
                ),
            ]
        else:
            events = [
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments,
                )
            ]
        return events + [self.event("response.output_item.done", output_index=index, item=item.model_dump())]
