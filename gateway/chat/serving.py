"""Chat completions: resolve the model, route, call the experts with fallback, answer, record. Every routed
endpoint comes through here with its request as a chat completion and its `Dialect` (gateway/chat/dialect.py),
which shapes the answer, the errors and the stream on its protocol's wire.

Every request that reaches routing leaves exactly one decision record, whatever happens after:
success, all experts failing, a broken stream, the client hanging up (499), or the shutdown drain
(MOE_DRAIN_S) running out while it was served: status `shutdown`, 503, the status for a server going
away, which a client retries elsewhere; the client did nothing (499) and no expert failed (502/504).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from experts.client import ExpertFailure
from experts.combine import Combiner, Plan
from experts.pool import AllFailed, Answer, ExpertPool, ms_since
from gateway.chat.cache import ResponseCache
from gateway.chat.dialect import ChatDialect, Dialect
from gateway.chat.protocol import REPLAY_FIRST, ChatCompletionRequest, openai_completion, replay
from gateway.chat.relay import OpenStream, RelayResponse, encoded, relay, uncancel
from gateway.chat.routing import RoutingBatcher
from gateway.chat.targets import Target, Targets
from gateway.config import GatewayConfig, stored_text
from gateway.decisions.log import DecisionLog
from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError
from gateway.keys.guard import KeyGuard
from gateway.keys.store import ApiKey
from gateway.observability.logs import log_request
from gateway.observability.metrics import GatewayMetrics
from gateway.reload import Trial
from gateway.shared_state import SharedState
from routers.base import Decision, Router
from routers.exploration import choose

if TYPE_CHECKING:  # tracing's instrumentation and exporter load only when it is on
    from gateway.observability.tracing import RequestTracer


_T = TypeVar("_T")


class ClientGone(Exception):
    pass


class ChatService:
    def __init__(
        self,
        config: GatewayConfig,
        routers: dict[str, Router],
        pool: ExpertPool,
        decision_log: DecisionLog,
        state: SharedState,
        *,
        keys: KeyGuard,
        metrics: GatewayMetrics,
        shadows: Mapping[str, Router] | None = None,
        shadow_share: float = 0.0,
        trials: Mapping[str, Trial] | None = None,
        log_prompts: bool = False,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.routers = routers  # swapped entry by entry when a new router version is served (gateway/reload.py)
        self.pool = pool
        self.decision_log = decision_log
        self.state = state
        self.keys = keys
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.tracer = tracer
        self.shadows = shadows if shadows is not None else {}  # router name -> its shadow version (gateway/reload.py)
        self.shadow_share = shadow_share
        self.trials = trials if trials is not None else {}  # router name -> its A/B candidate (gateway/reload.py)
        self.targets = Targets(config, self.routers)
        self.cache = ResponseCache(state)
        self.batcher = RoutingBatcher()

    def close(self) -> None:
        self.batcher.close()

    def record(self, record: DecisionRecord) -> None:
        """The one exit of every routed request: its cost, then metrics, the decision log, the caller's key usage,
        the access log line and, with tracing on, its spans."""
        if not record.cache_hit:
            record.cost_usd = self.pool.cost_usd(record.calls)
        self.metrics.observe(record)
        self.decision_log.record(record)
        self.keys.charge(record)
        log_request(record)
        if self.tracer is not None:
            self.tracer.record(record)

    # -- resolution and routing ---------------------------------------------------------------
    def target(self, body: ChatCompletionRequest, request: Request) -> Target:
        """What the request asks for: its model resolved, and whether the response cache may answer it."""
        # Cache-Control: no-cache / no-store opts one request out of the cache, both ways.
        opted_out = any(d in request.headers.get("cache-control", "") for d in ("no-cache", "no-store"))
        return replace(self.targets.resolve(body.model), use_cache=self.state.redis_ok and not opted_out)

    def new_record(
        self, body: ChatCompletionRequest, target: Target, key: ApiKey | None, messages: list[dict[str, Any]]
    ) -> DecisionRecord:
        """`messages`: the body's wire messages, built once per request."""
        # One hash of what decides the answer: the record's request_hash and (per tenant) the response-cache key.
        # Streamed or not, and who asked (`user`), do not change the answer; everything else does.
        content = body.model_dump(exclude_none=True, exclude={"stream", "stream_options", "user"})
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return DecisionRecord(
            requested_model=target.requested,
            virtual_model=target.virtual_model.name if target.virtual_model else None,
            policy=target.knob,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            stream=body.stream,
            store_text=stored_text(target.virtual_model, self.log_prompts), messages=messages,
            api_key_id=key.id if key else None,
            tenant=key.tenant if key else None,
        )

    async def route(
        self, target: Target, record: DecisionRecord, messages: list[dict[str, Any]], sticky: str | None = None
    ) -> list[str]:
        """Experts to try, best first; experts known to be down (probe or breaker) go last rather than nowhere.
        `sticky`: the API key or `user` an A/B test assigns to its candidate or to the active version, always alike."""
        if target.router is None:
            assert target.expert is not None
            record.chosen_expert = target.expert.name
            return [target.expert.name]
        router = target.router
        if target.virtual_model and sticky and (trial := self.trials.get(target.virtual_model.router)) \
                and trial.serves(sticky):
            router = trial.router
        started = time.perf_counter()
        decision = await self.batcher.decide(router, messages, target.policy)
        record.routing_ms = ms_since(started)
        record.router = decision.router
        record.router_version = decision.version
        record.ranked = [{"expert": s.name, "score": round(s.score, 6)} for s in decision.ranked]
        record.recruited = list(decision.recruited)
        record.confidence = decision.confidence
        if target.virtual_model and (shadow := self.shadows.get(target.virtual_model.router)) is not None \
                and random.random() < self.shadow_share:
            await self._shadow(shadow, target, record, messages, decision)
        ranked = [decision.chosen] + [s.name for s in decision.ranked if s.name != decision.chosen]
        ranked = [name for name in ranked if name in self.pool]
        exploration = target.virtual_model.exploration if target.virtual_model else None
        if exploration is None:
            record.propensity = 1.0
        else:
            score = {s.name: s.score for s in decision.ranked}
            choice = choose(ranked, [score.get(n, 0.0) for n in ranked], exploration.epsilon, exploration.distribution)
            ranked, record.propensity, record.explored = choice.order, choice.propensity, choice.explored
        return await self.pool.up_first(ranked)

    async def _shadow(
        self, shadow: Router, target: Target, record: DecisionRecord, messages: list[dict[str, Any]], served: Decision
    ) -> None:
        """The shadow version's decision on the same request, recorded beside the served one and never served."""
        decision = await self.batcher.decide(shadow, messages, target.policy)
        record.shadow_version = f"{decision.router}@{decision.version}"
        record.shadow_expert = decision.chosen
        record.shadow_agrees = decision.chosen == served.chosen
        record.shadow_delta = round(_score(decision, decision.chosen) - _score(served, served.chosen), 6)

    async def _plan(
        self, target: Target, body: ChatCompletionRequest, messages: list[dict[str, Any]], record: DecisionRecord,
        sticky: str | None,
    ) -> Plan:
        """Experts to try for the answer, best first, and the conversation they answer; or, for a virtual model
        that combines several experts, what combining them gave (experts/combine.py)."""
        plan = Plan(await self.route(target, record, messages, sticky), messages, record.recruited)
        vm, router = target.virtual_model, target.router
        if vm is None or router is None or not (vm.synthesis or vm.vote or vm.cascade):
            return plan
        expected = dict(zip([e.name for e in router.experts], router.expected_cost().tolist(), strict=True))
        combiner = Combiner(self.pool, record.calls, expected)
        params = body.upstream_params()
        if vm.synthesis is not None:
            aggregator = router.manifest.params.get("aggregator") if router.manifest else None
            plan = await combiner.synthesise(vm.synthesis, plan, params, aggregator)
        elif vm.vote is not None:
            plan = await combiner.vote(vm.vote, plan, params)
        elif vm.cascade is not None:
            assert target.agree is not None  # `resolve` sets it for every cascade
            plan = await combiner.cascade(vm.cascade, target.agree, plan, params)
        record.recruited = plan.recruited
        return plan

    # -- answers ------------------------------------------------------------------------------
    def answered(self, record: DecisionRecord, answer: Answer, upstream_ms: float | None = None) -> dict[str, Any]:
        """An expert's whole answer as the completion the client gets, the record settled. `upstream_ms`: its call's
        latency; None for a vote's or a cascade's answer, whose upstream time is the whole fan-out's, all of it
        before the first token."""
        record.chosen_expert = answer.expert
        if upstream_ms is not None:
            record.upstream_ms = upstream_ms
        else:
            first_call = min(call.started_at for call in record.calls)
            record.upstream_ms = round((datetime.now(UTC) - first_call).total_seconds() * 1000, 3)
        record.ttft_ms = record.upstream_ms
        record.took(answer.payload.get("usage"))
        record.keep_answer(answer.text)
        record.settle("ok", 200)
        return openai_completion(answer.payload, record)

    @staticmethod
    def failed(record: DecisionRecord, error: APIError) -> None:
        record.settle("error", error.status, error.message)

    def headers(self, record: DecisionRecord) -> dict[str, str]:
        headers = {"x-moe-decision-id": record.id}
        if record.chosen_expert:
            headers["x-moe-expert"] = record.chosen_expert
        if record.router:
            headers["x-moe-router"] = f"{record.router}@{record.router_version}"
        if len(record.recruited) > 1:
            headers["x-moe-recruited"] = ",".join(record.recruited)
        if record.explored:
            headers["x-moe-explored"] = "true"
        if record.cache_hit is not None:
            headers["x-moe-cache"] = "hit" if record.cache_hit else "miss"
        return headers

    # -- non-streaming ------------------------------------------------------------------------
    async def complete(
        self, body: ChatCompletionRequest, request: Request, key: ApiKey | None, dialect: Dialect | None = None
    ) -> JSONResponse:
        """The whole answer, in `dialect`'s shape (default: chat completions)."""
        dialect = dialect or ChatDialect()
        target = self.target(body, request)
        messages = body.wire_messages()
        record = self.new_record(body, target, key, messages)
        try:
            completion = await _unless_disconnected(request, self._complete(body, messages, target, record, key))
            return JSONResponse(await dialect.answer(completion, record), headers=self.headers(record))
        except APIError as error:
            self.failed(record, error)
            return JSONResponse(dialect.error(error), status_code=error.status, headers=self.headers(record))
        except ClientGone:
            record.settle("client_disconnected", 499)
            return JSONResponse({}, status_code=499)
        except asyncio.CancelledError:  # not the client (that is ClientGone): uvicorn cancelled it, the drain ran out
            record.settle("shutdown", 503)
            return _shutting_down(dialect)
        finally:
            self.record(record)

    async def _complete(
        self, body: ChatCompletionRequest, messages: list[dict[str, Any]], target: Target, record: DecisionRecord,
        key: ApiKey | None,
    ) -> dict[str, Any]:
        if target.use_cache and (cached := await self.cache.lookup(record)) is not None:
            return openai_completion(cached, record)
        plan = await self._plan(target, body, messages, record, _sticky(key, body))
        if plan.answer is not None:
            completion = self.answered(record, plan.answer)
        else:
            try:
                call, answer = await self.pool.complete(record.calls, plan.candidates, plan.messages, body.upstream_params())
            except AllFailed as failed:
                raise all_failed(failed.failures) from None
            completion = self.answered(record, answer, call.latency_ms)
        if target.use_cache:
            await self.cache.store(record, completion)
        return completion

    # -- streaming ----------------------------------------------------------------------------
    async def stream(
        self, body: ChatCompletionRequest, request: Request, key: ApiKey | None, dialect: Dialect | None = None
    ) -> StreamingResponse | JSONResponse:
        """Fallback is possible until the first chunk is in hand; headers wait for it so they name the expert.
        `dialect`: the stream's protocol (default: chat completions, with usage when `stream_options` asks)."""
        dialect = dialect or ChatDialect(bool(body.stream_options and body.stream_options.include_usage))
        target = self.target(body, request)
        messages = body.wire_messages()
        record = self.new_record(body, target, key, messages)
        try:
            opened = await _unless_disconnected(request, self._open_stream(body, messages, target, record, key))
        except APIError as error:
            self.failed(record, error)
            self.record(record)
            return JSONResponse(dialect.error(error), status_code=error.status, headers=self.headers(record))
        except ClientGone:
            record.settle("client_disconnected", 499)
            self.record(record)
            return JSONResponse({}, status_code=499)
        except asyncio.CancelledError:  # as in complete(): the drain ran out before the first byte
            record.settle("shutdown", 503)
            self.record(record)
            return _shutting_down(dialect)
        except BaseException:
            self.record(record)
            raise
        items = relay(opened, record, pool=self.pool, cache=self.cache if target.use_cache else None, done=self.record)
        return RelayResponse(opened, encoded(dialect, items, record),
                             headers={**self.headers(record), "cache-control": "no-cache"})

    async def _open_stream(
        self, body: ChatCompletionRequest, messages: list[dict[str, Any]], target: Target, record: DecisionRecord,
        key: ApiKey | None,
    ) -> OpenStream:
        if target.use_cache and (cached := await self.cache.lookup(record)) is not None:
            return OpenStream(None, replay(cached), REPLAY_FIRST, time.perf_counter())
        plan = await self._plan(target, body, messages, record, _sticky(key, body))
        if plan.answer is not None:  # complete already: cached now, then streamed as a cached answer is
            completion = self.answered(record, plan.answer)
            if target.use_cache:
                await self.cache.store(record, completion)
            return OpenStream(None, replay(completion), REPLAY_FIRST, time.perf_counter())
        try:
            call, started, chunks, first = await self.pool.open_stream(
                record.calls, plan.candidates, plan.messages, body.upstream_params()
            )
        except AllFailed as failed:
            raise all_failed(failed.failures) from None
        record.chosen_expert = call.expert
        return OpenStream(call, chunks, first, started)


def _sticky(key: ApiKey | None, body: ChatCompletionRequest) -> str | None:
    """Who an A/B test assigns: the request's `user` (within its API key: two tenants' "alice" are two people), else
    the API key; neither: the active version serves."""
    if body.user:
        return f"key:{key.id}:user:{body.user}" if key else f"user:{body.user}"
    return f"key:{key.id}" if key else None


def _score(decision: Decision, expert: str) -> float:
    return next((s.score for s in decision.ranked if s.name == expert), 0.0)


def all_failed(failures: list[ExpertFailure]) -> APIError:
    """What the client gets when no expert answered: the last one's rejection (the request's fault), a 504 when
    every one timed out, else a 502."""
    last = failures[-1]
    if last.kind == "upstream_4xx":
        return APIError(last.status or 400, f"The expert rejected the request: {last}", code="upstream_rejected")
    status = 504 if all(f.kind == "timeout" for f in failures) else 502
    tried = ", ".join(f.kind for f in failures)
    return APIError(status, f"No expert could answer ({tried}).", code="experts_unavailable")


def _shutting_down(dialect: Dialect) -> JSONResponse:
    """The answer to a request the shutdown drain cut before its first byte, instead of uvicorn's bare 500: a 503
    the client can retry elsewhere, sent while the server finishes shutting down (the cancel is the drain's
    deadline, so it is taken back to let the answer out)."""
    uncancel()
    error = APIError(503, "The gateway is shutting down; retry the request.", code="shutting_down")
    return JSONResponse(dialect.error(error), status_code=503, headers={"retry-after": "1"})


async def _unless_disconnected(request: Request, work: Awaitable[_T]) -> _T:
    """Run `work` in this task, cancelling it (and with it the upstream call) if the client hangs up first: one
    watcher task per request, not a second task for the work and a wait over both."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request)
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:  # uvicorn's cancel (the shutdown drain ran out), not the client's
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
