"""Chat completions: resolve the model, route, call the experts with fallback, answer, record.

Every request that reaches routing leaves exactly one decision record, whatever happens after:
success, all experts failing, a broken stream, the client hanging up (499), or the shutdown drain
(MOE_DRAIN_S) running out while it was served: status `shutdown`, 503, the status for a server going
away, which a client retries elsewhere; the client did nothing (499) and no expert failed (502/504).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive

from experts.aggregate import answers_needed, expert_weights, extract_choice, pick_answer, synthesis_messages
from experts.client import ExpertClients, ExpertFailure
from experts.health import HealthMonitor
from experts.registry import ExpertConfig
from gateway.config import (
    CascadeConfig,
    GatewayConfig,
    SynthesisConfig,
    VirtualModelConfig,
    VoteConfig,
)
from gateway.decision_log import DecisionLog, DecisionRecord, ExpertCall
from gateway.errors import APIError, error_body, error_response
from gateway.keys import ApiKey, KeyGuard
from gateway.logs import log_request
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from gateway.responses import REPLAY_FIRST, openai_chunk, openai_completion, openai_usage, replay, sse, usage_chunk
from gateway.routing import RoutingBatcher
from gateway.shared_state import SharedState
from routers.base import Router
from routers.policy import CostPolicy, parse_knob

if TYPE_CHECKING:  # tracing's instrumentation and exporter load only when it is on
    from gateway.tracing import RequestTracer

_T = TypeVar("_T")


@dataclass(frozen=True)
class Target:
    """What the request's `model` names: a virtual model (routed) or one expert (direct)."""

    requested: str
    virtual_model: VirtualModelConfig | None = None
    router: Router | None = None
    expert: ExpertConfig | None = None
    knob: str | None = None
    policy: CostPolicy | None = None
    agree: int | None = None  # a cascade's: called experts that must name one choice before it stops
    use_cache: bool = False


@dataclass(frozen=True)
class _Answer:
    """One expert's complete answer from a fan-out."""

    expert: str
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        choices = self.payload.get("choices") or [{}]
        return (choices[0].get("message") or {}).get("content") or ""


@dataclass(frozen=True)
class _Plan:
    """How a request gets its answer: try `candidates` in order on `messages`, unless a vote or a cascade
    already holds the `answer` (its call recorded and paid for)."""

    candidates: list[str]
    messages: list[dict[str, Any]]
    answer: _Answer | None = None


class ClientGone(Exception):
    pass


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _call_answered(call: ExpertCall, started: float, usage: Mapping[str, Any] | None) -> None:
    call.status, call.latency_ms = "ok", _ms(started)
    usage = usage or {}
    call.prompt_tokens, call.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")


class ChatService:
    def __init__(
        self,
        config: GatewayConfig,
        routers: Mapping[str, Router],
        decision_log: DecisionLog,
        health: HealthMonitor,
        state: SharedState,
        *,
        keys: KeyGuard,
        metrics: GatewayMetrics,
        log_prompts: bool = False,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.config = config
        self.routers = dict(routers)
        self.decision_log = decision_log
        self.health = health
        self.state = state
        self.keys = keys
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.tracer = tracer
        self.clients = ExpertClients(config.experts)
        self.batcher = RoutingBatcher()
        self._virtual = {v.name: v for v in config.virtual_models}
        self._experts = {e.name: e for e in config.experts}

    async def aclose(self) -> None:
        self.batcher.close()
        await self.clients.aclose()

    def _record(self, record: DecisionRecord) -> None:
        """The one exit of every routed request: metrics, the decision log, the caller's key usage, the access
        log line and, with tracing on, its spans."""
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
        return replace(self.resolve(body.model), use_cache=self.state.redis_ok and not opted_out)

    def resolve(self, model: str) -> Target:
        """`moe-auto`, `moe-auto:<cost knob>` (e.g. `:0.3`, `:q95`), a cascade's `<name>:<agree>` (e.g. `:3`), or an
        expert's own name."""
        if expert := self._experts.get(model):
            return Target(model, expert=expert)
        name, _, knob = model.partition(":")
        if vm := self._virtual.get(name):
            router = self.routers[vm.router]
            if vm.cascade is not None:  # its order sets what it costs; its suffix sets how far it escalates
                knob = knob or str(vm.cascade.agree)
                return Target(model, virtual_model=vm, router=router, knob=knob, agree=_agreement(knob))
            knob = knob or vm.policy
            if not knob:
                return Target(model, virtual_model=vm, router=router)
            try:
                policy = parse_knob(knob, router.manifest.params.get("calibration") if router.manifest else None)
            except ValueError as exc:
                raise APIError(400, str(exc), param="model", code="invalid_cost_knob") from None
            return Target(model, virtual_model=vm, router=router, knob=knob, policy=policy)
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")

    async def _route(
        self,
        target: Target,
        body: ChatCompletionRequest,
        record: DecisionRecord,
        messages: list[dict[str, Any]],
    ) -> list[str]:
        """Experts to try, best first; experts known to be down (probe or breaker) go last rather than nowhere.

        `messages`: the body's wire messages, built once per request.
        """
        if target.router is None:
            assert target.expert is not None
            record.chosen_expert = target.expert.name
            return [target.expert.name]
        started = time.perf_counter()
        decision = await self.batcher.decide(target.router, messages, target.policy)
        record.routing_ms = _ms(started)
        record.router = decision.router
        record.router_version = decision.version
        record.ranked = [{"expert": s.name, "score": round(s.score, 6)} for s in decision.ranked]
        record.recruited = list(decision.recruited)
        record.confidence = decision.confidence
        ranked = [decision.chosen] + [s.name for s in decision.ranked if s.name != decision.chosen]
        ranked = [name for name in ranked if name in self.clients]
        return await self._up_first(ranked)

    async def _up_first(self, names: list[str]) -> list[str]:
        """`names` with the experts known to be down (probe or breaker) moved last."""
        tripped = await self.state.open_breakers(names)
        up = [n for n in names if self.health.status[n].healthy and n not in tripped]
        return up + [n for n in names if n not in up]

    async def _plan(
        self, target: Target, body: ChatCompletionRequest, messages: list[dict[str, Any]], record: DecisionRecord
    ) -> _Plan:
        """Experts to try for the answer, best first, and the conversation they answer; or, for a virtual model
        that combines several experts, what combining them gave (see `_synthesise`, `_vote`, `_cascade`)."""
        plan = _Plan(await self._route(target, body, record, messages), messages)
        vm, router = target.virtual_model, target.router
        if vm is None or router is None:
            return plan
        if vm.synthesis is not None:
            return await self._synthesise(router, vm.synthesis, plan, body, record)
        if vm.vote is not None:
            return await self._vote(router, vm.vote, plan, body, record)
        if vm.cascade is not None:
            assert target.agree is not None  # `resolve` sets it for every cascade
            return await self._cascade(router, vm.cascade, target.agree, plan, body, record)
        return plan

    async def _synthesise(
        self, router: Router, synthesis: SynthesisConfig, plan: _Plan, body: ChatCompletionRequest, record: DecisionRecord
    ) -> _Plan:
        """The aggregator expert answers a conversation holding the recruited experts' answers."""
        answers = await self._ask_recruited(router, synthesis, plan, body.upstream_params(), record)
        if not answers:
            return plan
        manifest = router.manifest
        aggregator = synthesis.aggregator or (manifest.params.get("aggregator") if manifest else None)
        if aggregator not in self.clients:
            aggregator = plan.candidates[0]
        return _Plan(
            [aggregator, *[c for c in plan.candidates if c != aggregator]],
            synthesis_messages(plan.messages, [(a.expert, a.text) for a in answers]),
        )

    async def _vote(
        self, router: Router, vote: VoteConfig, plan: _Plan, body: ChatCompletionRequest, record: DecisionRecord
    ) -> _Plan:
        """The recruited experts' weighted-majority answer."""
        answers = await self._ask_recruited(router, vote, plan, _capped(body, vote), record)
        return replace(plan, answer=_pick(answers, vote)) if answers else plan

    async def _cascade(
        self,
        router: Router,
        cascade: CascadeConfig,
        agree: int,
        plan: _Plan,
        body: ChatCompletionRequest,
        record: DecisionRecord,
    ) -> _Plan:
        """Cheapest first, until `agree` answers name one choice; the answer is the vote of those called.

        Each step asks at once the fewest next experts that could still bring agreement (the first two, for
        `agree` 2): asking fewer could not stop the cascade, asking more could pay for answers never needed.
        """
        if cascade.order:
            order = list(cascade.order)
        else:  # cheapest first; equal costs keep the routed order (sorted is stable)
            order = sorted(plan.candidates, key=self._expected_cost(router).__getitem__)
        order = await self._up_first(self._within_budget(router, order, cascade.max_cost_usd))
        params = _capped(body, cascade)
        deadline = time.perf_counter() + cascade.deadline_s
        answers: list[_Answer] = []
        called = 0
        while called < len(order) and (left_s := deadline - time.perf_counter()) > 0:
            needed = answers_needed([extract_choice(a.text, cascade.options) for a in answers], agree)
            if not needed:
                break
            step = order[called : called + needed]
            called += len(step)
            answers += await self._fan_out(step, plan.messages, params, record, left_s)
        record.recruited = order[:called]
        if not answers:  # nobody answered in time: they are tried one by one, cheapest first
            return replace(plan, candidates=order + [c for c in plan.candidates if c not in order])
        return replace(plan, answer=_pick(answers, cascade))

    async def _ask_recruited(
        self,
        router: Router,
        fan_out: SynthesisConfig | VoteConfig,
        plan: _Plan,
        params: Mapping[str, Any],
        record: DecisionRecord,
    ) -> list[_Answer]:
        """The answers of the router's recruited set (or its top k), in routed order and within the budget; none
        when fewer than two are recruited (one expert answers the question itself) or none answered in time (the
        top expert then does)."""
        pool = set(record.recruited) if len(record.recruited) > 1 else set(plan.candidates)
        recruited = [name for name in plan.candidates if name in pool][: fan_out.k]
        recruited = self._within_budget(router, recruited, fan_out.max_cost_usd)
        if len(recruited) < 2:
            return []
        record.recruited = recruited
        return await self._fan_out(recruited, plan.messages, params, record, fan_out.deadline_s)

    def _within_budget(self, router: Router, names: list[str], max_cost_usd: float | None) -> list[str]:
        """`names` in order, each kept if the router's expected cost of those kept stays within the budget (the
        first always is: someone must answer)."""
        if max_cost_usd is None:
            return names
        cost = self._expected_cost(router)
        kept: list[str] = []
        spent = 0.0
        for name in names:
            if not kept or spent + cost[name] <= max_cost_usd:
                kept.append(name)
                spent += cost[name]
        return kept

    @staticmethod
    def _expected_cost(router: Router) -> dict[str, float]:
        """USD per query for each expert: measured in the router's manifest, else priced (routers/policy.py)."""
        return dict(zip([e.name for e in router.experts], router.expected_cost().tolist(), strict=True))

    async def _fan_out(
        self,
        experts: list[str],
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        record: DecisionRecord,
        deadline_s: float,
    ) -> list[_Answer]:
        """Ask these experts at once; the answers with text that came back before the deadline, in their order."""

        async def ask(name: str) -> dict[str, Any] | None:
            try:  # cancelled past the deadline, or when the client hangs up
                call, started, payload = await self._call(
                    record, name, lambda: self.clients[name].complete(messages, params)
                )
            except ExpertFailure:
                return None
            _call_answered(call, started, payload.get("usage"))
            self._charge(record, name, payload.get("usage"))
            return payload

        tasks = [asyncio.create_task(ask(name)) for name in experts]
        try:
            await asyncio.wait(tasks, timeout=deadline_s)
        finally:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let cancelled calls record themselves
        answers = [
            _Answer(name, payload)
            for name, task in zip(experts, tasks, strict=True)
            if not task.cancelled() and task.exception() is None and (payload := task.result()) is not None
        ]
        return [answer for answer in answers if answer.text]

    def _answered(self, record: DecisionRecord, answer: _Answer) -> dict[str, Any]:
        """A vote's or a cascade's answer as the completion: its call is already recorded and paid for; the
        upstream time is the whole fan-out's, and all of it passed before the first token."""
        record.chosen_expert = answer.expert
        first_call = min(call.started_at for call in record.calls)
        record.upstream_ms = round((datetime.now(UTC) - first_call).total_seconds() * 1000, 3)
        record.ttft_ms = record.upstream_ms
        usage = answer.payload.get("usage") or {}
        record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        record.status, record.http_status = "ok", 200
        return openai_completion(answer.payload, record)

    def _new_record(
        self,
        body: ChatCompletionRequest,
        target: Target,
        key: ApiKey | None,
        messages: list[dict[str, Any]],
    ) -> DecisionRecord:
        """`messages`: as in `_route`."""
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
            prompt=json.dumps(messages) if self.log_prompts else None,
            api_key_id=key.id if key else None,
            tenant=key.tenant if key else None,
        )

    def _headers(self, record: DecisionRecord) -> dict[str, str]:
        headers = {"x-moe-decision-id": record.id}
        if record.chosen_expert:
            headers["x-moe-expert"] = record.chosen_expert
        if record.router:
            headers["x-moe-router"] = f"{record.router}@{record.router_version}"
        if len(record.recruited) > 1:
            headers["x-moe-recruited"] = ",".join(record.recruited)
        if record.cache_hit is not None:
            headers["x-moe-cache"] = "hit" if record.cache_hit else "miss"
        return headers

    def _finish(self, record: DecisionRecord, usage: Mapping[str, Any] | None, started: float) -> None:
        record.upstream_ms = _ms(started)
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens")
            record.completion_tokens = usage.get("completion_tokens")
            if record.chosen_expert:
                self._charge(record, record.chosen_expert, usage)  # after any fan-out's answers

    def _charge(self, record: DecisionRecord, expert: str, usage: Mapping[str, Any] | None) -> None:
        """Add what one answer cost to the record, when its usage says how many tokens it took."""
        prompt, completion = (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens")
        if prompt is not None and completion is not None:
            price = self._experts[expert].price_per_mtok
            record.cost_usd = (record.cost_usd or 0.0) + (prompt + completion) * price / 1e6

    def _answer(
        self, record: DecisionRecord, call: ExpertCall, started: float, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """An expert's non-streamed answer in hand: its call and the record settled; the completion the client gets."""
        usage = payload.get("usage")
        _call_answered(call, started, usage)
        record.chosen_expert = call.expert
        record.status, record.http_status = "ok", 200
        self._finish(record, usage, started)
        record.ttft_ms = record.upstream_ms
        return openai_completion(payload, record)

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
    async def complete(self, body: ChatCompletionRequest, request: Request, key: ApiKey | None) -> JSONResponse:
        target = self.target(body, request)
        messages = body.wire_messages()
        record = self._new_record(body, target, key, messages)
        try:
            payload = await _unless_disconnected(request, self._complete(body, messages, target, record))
            return JSONResponse(payload, headers=self._headers(record))
        except APIError as error:
            self._fail(record, error, "error")
            return JSONResponse(error.body(), status_code=error.status, headers=self._headers(record))
        except ClientGone:
            record.status, record.http_status = "client_disconnected", 499
            return JSONResponse({}, status_code=499)
        except asyncio.CancelledError:  # not the client (that is ClientGone): uvicorn cancelled it, the drain ran out
            record.status, record.http_status = "shutdown", 503
            return _shutting_down()
        finally:
            self._record(record)

    async def _first_success(
        self, candidates: list[str], record: DecisionRecord, attempt: Callable[[str], Awaitable[_T]]
    ) -> tuple[ExpertCall, float, _T]:
        """Try the candidates in order until one answers; falls back only on failures that allow it."""
        failures: list[ExpertFailure] = []
        for name in candidates:
            try:
                call, started, result = await self._call(record, name, lambda name=name: attempt(name))
            except ExpertFailure as failure:
                failures.append(failure)
                if not failure.can_fall_back:
                    break
                continue
            record.chosen_expert = name
            return call, started, result
        raise self._all_failed(failures)

    async def _call(
        self, record: DecisionRecord, name: str, request: Callable[[], Awaitable[_T]]
    ) -> tuple[ExpertCall, float, _T]:
        """One expert call, as a row of the record, counted by the expert's breaker; an ExpertFailure is raised
        on, the row saying what went wrong (or that it was cancelled)."""
        call = ExpertCall(attempt=len(record.calls), expert=name, started_at=datetime.now(UTC))
        record.calls.append(call)
        started = time.perf_counter()
        try:
            result = await request()
        except ExpertFailure as failure:
            call.status, call.error, call.latency_ms = failure.kind, str(failure), _ms(started)
            if failure.can_fall_back:
                await self.state.record_failure(name)
            raise
        except asyncio.CancelledError:
            call.status, call.latency_ms = "cancelled", _ms(started)
            raise
        await self.state.record_success(name)
        return call, started, result

    async def _complete(
        self, body: ChatCompletionRequest, messages: list[dict[str, Any]], target: Target, record: DecisionRecord
    ) -> dict[str, Any]:
        if target.use_cache and (cached := await self._cache_lookup(record)) is not None:
            return openai_completion(cached, record)
        plan = await self._plan(target, body, messages, record)
        if plan.answer is not None:
            completion = self._answered(record, plan.answer)
        else:
            params = body.upstream_params()
            call, started, payload = await self._first_success(
                plan.candidates, record, lambda name: self.clients[name].complete(plan.messages, params)
            )
            completion = self._answer(record, call, started, payload)
        if target.use_cache:
            await self._cache_store(record, completion)
        return completion

    # -- streaming ----------------------------------------------------------------------------
    async def stream(
        self, body: ChatCompletionRequest, request: Request, key: ApiKey | None
    ) -> StreamingResponse | JSONResponse:
        """Fallback is possible until the first chunk is in hand; headers wait for it so they name the expert."""
        target = self.target(body, request)
        messages = body.wire_messages()
        record = self._new_record(body, target, key, messages)
        try:
            opened = await _unless_disconnected(request, self._open_stream(body, messages, target, record))
        except APIError as error:
            self._fail(record, error, "error")
            self._record(record)
            return JSONResponse(error.body(), status_code=error.status, headers=self._headers(record))
        except ClientGone:
            record.status, record.http_status = "client_disconnected", 499
            self._record(record)
            return JSONResponse({}, status_code=499)
        except asyncio.CancelledError:  # as in complete(): the drain ran out before the first byte
            record.status, record.http_status = "shutdown", 503
            self._record(record)
            return _shutting_down()
        except BaseException:
            self._record(record)
            raise
        return _RelayResponse(
            opened,
            self._relay(opened, body, record, target.use_cache),
            headers={**self._headers(record), "cache-control": "no-cache"},
        )

    async def _open_stream(
        self, body: ChatCompletionRequest, messages: list[dict[str, Any]], target: Target, record: DecisionRecord
    ) -> _OpenStream:
        if target.use_cache and (cached := await self._cache_lookup(record)) is not None:
            return _OpenStream(None, replay(cached), REPLAY_FIRST, time.perf_counter())
        plan = await self._plan(target, body, messages, record)
        if plan.answer is not None:  # complete already: cached now, then streamed as a cached answer is
            completion = self._answered(record, plan.answer)
            if target.use_cache:
                await self._cache_store(record, completion)
            return _OpenStream(None, replay(completion), REPLAY_FIRST, time.perf_counter())
        params = body.upstream_params()

        async def first_chunk(name: str) -> tuple[AsyncGenerator[dict[str, Any], None], dict[str, Any]]:
            chunks = self.clients[name].stream(plan.messages, params)
            try:
                return chunks, await anext(chunks)
            except StopAsyncIteration:
                await chunks.aclose()
                raise ExpertFailure("bad_response", "empty stream", 502) from None
            except BaseException:
                await chunks.aclose()
                raise

        call, started, (chunks, first) = await self._first_success(plan.candidates, record, first_chunk)
        return _OpenStream(call, chunks, first, started)

    async def _relay(
        self, opened: _OpenStream, body: ChatCompletionRequest, record: DecisionRecord, use_cache: bool
    ) -> AsyncIterator[bytes]:
        call, started = opened.call, opened.started
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream_id = f"chatcmpl-{record.id}"
        usage: dict[str, Any] | None = None
        text: list[str] = []  # the answer as it streams, cached once the stream is complete
        cacheable = True
        finish_reason = None
        record.status, record.http_status = "client_disconnected", 499  # until the stream completes
        try:
            chunk: dict[str, Any] | None = opened.first
            while chunk is not None:
                usage = chunk.get("usage") or usage
                event = openai_chunk(chunk, stream_id, record.chosen_expert or "")
                if event is not None:
                    if record.ttft_ms is None:
                        record.ttft_ms = _ms(started)
                    for choice in event["choices"]:
                        delta = choice["delta"]
                        cacheable &= choice["index"] == 0 and "tool_calls" not in delta
                        text.append(delta.get("content") or "")
                        finish_reason = choice["finish_reason"] or finish_reason
                    yield sse(event)
                chunk = await anext(opened.chunks, None)
            if include_usage and usage:
                yield sse(usage_chunk(stream_id, record.chosen_expert or "", usage))
            yield sse("[DONE]")
            record.status, record.http_status = "ok", 200
            if call is not None:
                call.status = "ok"
                if use_cache and cacheable:
                    message = {"role": "assistant", "content": "".join(text)}
                    await self._cache_store(record, {"model": record.chosen_expert, "usage": openai_usage(usage),
                                                   "choices": [{"index": 0, "message": message,
                                                                "finish_reason": finish_reason}]})
        except ExpertFailure as failure:
            # Bytes already reached the client: no fallback now, end the stream with an error event.
            if call is not None:
                call.status, call.error = failure.kind, str(failure)
                await self.state.record_failure(call.expert)
            record.status, record.http_status, record.error = "stream_error", 502, str(failure)
            yield sse(error_body(502, f"The expert failed mid-stream: {failure.kind}.", code="stream_interrupted"))
            yield sse("[DONE]")
        except asyncio.CancelledError:  # cancelled while it waited for the expert
            if record.status != "client_disconnected" or opened.client_gone:
                raise
            # Not the client leaving: uvicorn cancelled the request, the shutdown drain ran out. The client is
            # still there, so the stream ends as any broken stream does, with an error event it can act on.
            record.status, record.http_status = "shutdown", 503
            _uncancel()
            yield sse(error_body(503, "The gateway is shutting down; retry the request.", code="shutting_down"))
            yield sse("[DONE]")
        except GeneratorExit:  # closed at a yield: the response is gone, nothing more can be sent
            if record.status == "client_disconnected" and not opened.client_gone:
                record.status, record.http_status = "shutdown", 503
            raise
        finally:
            await opened.chunks.aclose()
            if call is not None:
                if call.status == "pending":
                    call.status = "cancelled"
                call.latency_ms, call.ttft_ms = _ms(started), record.ttft_ms
                if usage:
                    call.prompt_tokens, call.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
                self._finish(record, usage, started)
            self._record(record)

    # -- response cache -----------------------------------------------------------------------
    async def _cache_lookup(self, record: DecisionRecord) -> dict[str, Any] | None:
        cached = await self.state.cache_get(_cache_key(record))
        # A lookup Redis failed to answer is no miss: the cache was off for this request (no header, no count).
        record.cache_hit = cached is not None if self.state.redis_ok else None
        if cached is not None:
            record.chosen_expert = cached.get("model")
            record.status, record.http_status = "ok", 200
            usage = cached.get("usage") or {}
            record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            record.cost_usd = 0.0  # no expert was called
        return cached

    async def _cache_store(self, record: DecisionRecord, completion: dict[str, Any]) -> None:
        await self.state.cache_put(_cache_key(record), {k: completion[k] for k in ("model", "choices", "usage")})


def _cache_key(record: DecisionRecord) -> str:
    """Tenants never share cached answers. (A request hash is hex, so no tenant name makes two keys collide.)"""
    return f"{record.tenant}/{record.request_hash}" if record.tenant else record.request_hash


@dataclass
class _OpenStream:
    call: ExpertCall | None  # None when the answer was complete before streaming (the cache, a vote, a cascade)
    chunks: AsyncGenerator[dict[str, Any], None]
    first: dict[str, Any]
    started: float
    client_gone: bool = False  # the client hung up mid-stream (see _RelayResponse)


class _RelayResponse(StreamingResponse):
    """The SSE relay of an open stream. A client hanging up and the shutdown drain running out both
    cut the stream by cancelling it; only the hang-up comes with `http.disconnect`, noted here."""

    def __init__(self, opened: _OpenStream, content: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.opened = opened

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)  # returns only on http.disconnect (else it is cancelled)
        self.opened.client_gone = True


def _pick(answers: list[_Answer], vote: VoteConfig | CascadeConfig) -> _Answer:
    """The heaviest answer naming the weighted-majority choice (the first when none names one)."""
    weights = expert_weights([a.expert for a in answers], vote.accuracy, vote.options)
    return answers[pick_answer([a.text for a in answers], weights, vote.options)]


def _capped(body: ChatCompletionRequest, combine: VoteConfig | CascadeConfig) -> dict[str, Any]:
    """The request's upstream parameters with each answer cut at the virtual model's `answer_max_tokens`."""
    params = body.upstream_params()
    if combine.answer_max_tokens is not None:
        params["max_tokens"] = min(params.get("max_tokens", combine.answer_max_tokens), combine.answer_max_tokens)
    return params


def _shutting_down() -> JSONResponse:
    """The answer to a request the shutdown drain cut before its first byte, instead of uvicorn's bare 500: a 503
    the client can retry elsewhere, sent while the server finishes shutting down (the cancel is the drain's
    deadline, so it is taken back to let the answer out)."""
    _uncancel()
    response = error_response(503, "The gateway is shutting down; retry the request.", code="shutting_down")
    response.headers["retry-after"] = "1"
    return response


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _agreement(knob: str) -> int:
    """A cascade's per-request knob: how many called experts must name one choice, a whole number 1-99."""
    if not (knob.isascii() and knob.isdigit()) or not 1 <= len(knob) <= 2 or int(knob) < 1:
        raise APIError(
            400, f"bad cascade knob {knob!r}: the number of experts that must agree (e.g. `:2`)",
            param="model", code="invalid_cascade_knob",
        )
    return int(knob)


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


