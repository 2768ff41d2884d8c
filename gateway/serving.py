"""Chat completions: resolve the model, route, call the experts with fallback, answer, record.

Every request that reaches routing leaves exactly one decision record, whatever happens after:
success, all experts failing, a broken stream, or the client hanging up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from experts.client import ExpertClient, ExpertFailure
from experts.health import HealthMonitor
from gateway.config import ExpertConfig, GatewayConfig, VirtualModelConfig
from gateway.decision_log import DecisionLog, DecisionRecord, ExpertCall
from gateway.errors import APIError, error_body
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from routers.base import Decision, Router
from routers.policy import CostPolicy, parse_knob


@dataclass(frozen=True)
class Target:
    """What the request's `model` names: a virtual model (routed) or one expert (direct)."""

    requested: str
    virtual_model: VirtualModelConfig | None = None
    router: Router | None = None
    expert: ExpertConfig | None = None
    knob: str | None = None
    policy: CostPolicy | None = None


class ClientGone(Exception):
    pass


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ChatService:
    def __init__(
        self,
        config: GatewayConfig,
        routers: Mapping[str, Router],
        decision_log: DecisionLog,
        health: HealthMonitor,
        *,
        metrics: GatewayMetrics,
        log_prompts: bool = False,
    ) -> None:
        self.config = config
        self.routers = dict(routers)
        self.decision_log = decision_log
        self.health = health
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.clients = {e.name: ExpertClient(e) for e in config.experts}
        self._virtual = {v.name: v for v in config.virtual_models}
        self._experts = {e.name: e for e in config.experts}

    def _record(self, record: DecisionRecord) -> None:
        """The one exit of every routed request: metrics, then the decision log."""
        self.metrics.observe(record)
        self.decision_log.record(record)

    # -- resolution and routing ---------------------------------------------------------------
    def resolve(self, model: str) -> Target:
        """`moe-auto`, `moe-auto:<cost knob>` (e.g. `:0.3`, `:q95`), or an expert's own name."""
        if expert := self._experts.get(model):
            return Target(model, expert=expert)
        name, _, knob = model.partition(":")
        if vm := self._virtual.get(name):
            router = self.routers[vm.router]
            knob = knob or vm.policy
            if not knob:
                return Target(model, virtual_model=vm, router=router)
            try:
                policy = parse_knob(knob, router.manifest.params.get("calibration") if router.manifest else None)
            except ValueError as exc:
                raise APIError(400, str(exc), param="model", code="invalid_cost_knob") from None
            return Target(model, virtual_model=vm, router=router, knob=knob, policy=policy)
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")

    async def _route(self, target: Target, body: ChatCompletionRequest, record: DecisionRecord) -> list[str]:
        """Experts to try, best first; experts known to be down go last rather than nowhere."""
        if target.router is None:
            assert target.expert is not None
            record.chosen_expert = target.expert.name
            return [target.expert.name]
        started = time.perf_counter()
        messages = body.wire_messages()
        decision: Decision = await asyncio.to_thread(target.router.decide, messages, target.policy)
        record.routing_ms = _ms(started)
        record.router = decision.router
        record.router_version = decision.version
        record.ranked = [{"expert": s.name, "score": round(s.score, 6)} for s in decision.ranked]
        record.recruited = list(decision.recruited)
        record.confidence = decision.confidence
        ranked = [decision.chosen] + [s.name for s in decision.ranked if s.name != decision.chosen]
        ranked = [name for name in ranked if name in self.clients]
        up = [n for n in ranked if self.health.status[n].healthy]
        return up + [n for n in ranked if n not in up]

    def _new_record(self, body: ChatCompletionRequest, target: Target) -> DecisionRecord:
        canonical = json.dumps(body.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))
        return DecisionRecord(
            requested_model=target.requested,
            virtual_model=target.virtual_model.name if target.virtual_model else None,
            policy=target.knob,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            stream=body.stream,
            prompt=json.dumps(body.wire_messages()) if self.log_prompts else None,
        )

    def _headers(self, record: DecisionRecord) -> dict[str, str]:
        headers = {"x-moe-decision-id": record.id}
        if record.chosen_expert:
            headers["x-moe-expert"] = record.chosen_expert
        if record.router:
            headers["x-moe-router"] = f"{record.router}@{record.router_version}"
        return headers

    def _finish(self, record: DecisionRecord, usage: Mapping[str, Any] | None, started: float) -> None:
        record.upstream_ms = _ms(started)
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens")
            record.completion_tokens = usage.get("completion_tokens")
            expert = self._experts[record.chosen_expert] if record.chosen_expert else None
            if expert and record.prompt_tokens is not None and record.completion_tokens is not None:
                tokens = record.prompt_tokens + record.completion_tokens
                record.cost_usd = tokens * expert.price_per_mtok / 1e6

    @staticmethod
    def _fail(record: DecisionRecord, error: APIError, status: str) -> None:
        record.status = status
        record.http_status = error.status
        record.error = error.message

    @staticmethod
    def _all_failed(failures: list[ExpertFailure]) -> APIError:
        last = failures[-1]
        if last.kind == "upstream_4xx":
            return APIError(last.status or 400, f"The expert rejected the request: {last}", code="upstream_rejected")
        status = 504 if all(f.kind == "timeout" for f in failures) else 502
        tried = ", ".join(f.kind for f in failures)
        return APIError(status, f"No expert could answer ({tried}).", code="experts_unavailable")

    # -- non-streaming ------------------------------------------------------------------------
    async def complete(self, body: ChatCompletionRequest, request: Request) -> JSONResponse:
        target = self.resolve(body.model)
        record = self._new_record(body, target)
        try:
            payload = await _unless_disconnected(request, self._complete(body, target, record))
            return JSONResponse(payload, headers=self._headers(record))
        except APIError as error:
            self._fail(record, error, "error")
            return JSONResponse(error.body(), status_code=error.status, headers=self._headers(record))
        except ClientGone:
            record.status, record.http_status = "client_disconnected", 499
            return JSONResponse({}, status_code=499)
        finally:
            self._record(record)

    async def _complete(self, body: ChatCompletionRequest, target: Target, record: DecisionRecord) -> dict[str, Any]:
        candidates = await self._route(target, body, record)
        messages, params = body.wire_messages(), body.upstream_params()
        failures: list[ExpertFailure] = []
        for attempt, name in enumerate(candidates):
            call = ExpertCall(attempt=attempt, expert=name, started_at=datetime.now(UTC))
            record.calls.append(call)
            started = time.perf_counter()
            try:
                payload = await self.clients[name].complete(messages, params)
            except ExpertFailure as failure:
                call.status, call.error, call.latency_ms = failure.kind, str(failure), _ms(started)
                failures.append(failure)
                if failure.can_fall_back:
                    continue
                break
            except asyncio.CancelledError:
                call.status, call.latency_ms = "cancelled", _ms(started)
                raise
            call.status, call.latency_ms = "ok", _ms(started)
            usage = payload.get("usage")
            call.prompt_tokens = (usage or {}).get("prompt_tokens")
            call.completion_tokens = (usage or {}).get("completion_tokens")
            record.chosen_expert = name
            record.status, record.http_status = "ok", 200
            self._finish(record, usage, started)
            record.ttft_ms = record.upstream_ms
            return _openai_completion(payload, record)
        raise self._all_failed(failures)

    # -- streaming ----------------------------------------------------------------------------
    async def stream(self, body: ChatCompletionRequest, request: Request) -> StreamingResponse | JSONResponse:
        """Fallback is possible until the first chunk is in hand; headers wait for it so they name the expert."""
        target = self.resolve(body.model)
        record = self._new_record(body, target)
        try:
            opened = await _unless_disconnected(request, self._open_stream(body, target, record))
        except APIError as error:
            self._fail(record, error, "error")
            self._record(record)
            return JSONResponse(error.body(), status_code=error.status, headers=self._headers(record))
        except ClientGone:
            record.status, record.http_status = "client_disconnected", 499
            self._record(record)
            return JSONResponse({}, status_code=499)
        except BaseException:
            self._record(record)
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            self._relay(opened, record, include_usage),
            media_type="text/event-stream",
            headers={**self._headers(record), "cache-control": "no-cache"},
        )

    async def _open_stream(
        self, body: ChatCompletionRequest, target: Target, record: DecisionRecord
    ) -> _OpenStream:
        candidates = await self._route(target, body, record)
        messages, params = body.wire_messages(), body.upstream_params()
        failures: list[ExpertFailure] = []
        for attempt, name in enumerate(candidates):
            call = ExpertCall(attempt=attempt, expert=name, started_at=datetime.now(UTC))
            record.calls.append(call)
            started = time.perf_counter()
            chunks = self.clients[name].stream(messages, params)
            try:
                first = await anext(chunks)
            except (ExpertFailure, StopAsyncIteration) as exc:
                failure = exc if isinstance(exc, ExpertFailure) else ExpertFailure("bad_response", "empty stream", 502)
                call.status, call.error, call.latency_ms = failure.kind, str(failure), _ms(started)
                failures.append(failure)
                await chunks.aclose()
                if failure.can_fall_back:
                    continue
                break
            except asyncio.CancelledError:
                call.status, call.latency_ms = "cancelled", _ms(started)
                await chunks.aclose()
                raise
            record.chosen_expert = name
            return _OpenStream(call, chunks, first, started)
        raise self._all_failed(failures)

    async def _relay(self, opened: _OpenStream, record: DecisionRecord, include_usage: bool) -> AsyncIterator[bytes]:
        call, started = opened.call, opened.started
        stream_id = f"chatcmpl-{record.id}"
        usage: dict[str, Any] | None = None
        record.status, record.http_status = "client_disconnected", 499  # until the stream completes
        try:
            chunk: dict[str, Any] | None = opened.first
            while chunk is not None:
                usage = chunk.get("usage") or usage
                event = _openai_chunk(chunk, stream_id, record.chosen_expert or "")
                if event is not None:
                    if record.ttft_ms is None:
                        record.ttft_ms = call.ttft_ms = _ms(started)
                    yield _sse(event)
                chunk = await anext(opened.chunks, None)
            if include_usage and usage:
                yield _sse(_usage_chunk(stream_id, record.chosen_expert or "", usage))
            yield _sse("[DONE]")
            record.status, record.http_status = "ok", 200
            call.status = "ok"
        except ExpertFailure as failure:
            # Bytes already reached the client: no fallback now, end the stream with an error event.
            call.status, call.error = failure.kind, str(failure)
            record.status, record.http_status, record.error = "stream_error", 502, str(failure)
            yield _sse(error_body(502, f"The expert failed mid-stream: {failure.kind}.", code="stream_interrupted"))
            yield _sse("[DONE]")
        finally:
            if call.status == "pending":
                call.status = "cancelled"
            await opened.chunks.aclose()
            call.latency_ms = _ms(started)
            if usage:
                call.prompt_tokens, call.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self._finish(record, usage, started)
            self._record(record)


@dataclass
class _OpenStream:
    call: ExpertCall
    chunks: AsyncIterator[dict[str, Any]]
    first: dict[str, Any]
    started: float


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Run `work`, cancelling it (and with it the upstream call) if the client hangs up first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _openai_completion(payload: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
    choices = [
        {
            "index": c.get("index", i),
            "message": {k: v for k, v in c.get("message", {}).items() if k in _MESSAGE_KEYS},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
        }
        for i, c in enumerate(payload.get("choices", []))
    ]
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": payload.get("created") or int(time.time()),
        "model": record.chosen_expert,
        "choices": choices,
        "usage": _usage(payload.get("usage")),
        "system_fingerprint": payload.get("system_fingerprint"),
    }


_MESSAGE_KEYS = {"role", "content", "tool_calls", "function_call", "refusal"}
_DELTA_KEYS = {"role", "content", "tool_calls", "function_call", "refusal"}


def _usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    if not usage:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(usage.get(k) or 0) for k in keys}


def _openai_chunk(chunk: Mapping[str, Any], stream_id: str, model: str) -> dict[str, Any] | None:
    """An upstream chunk in OpenAI's shape; None for chunks that carry only usage."""
    choices = [
        {
            "index": c.get("index", 0),
            "delta": {k: v for k, v in (c.get("delta") or {}).items() if k in _DELTA_KEYS and v is not None},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
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


def _usage_chunk(stream_id: str, model: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": _usage(usage),
    }
