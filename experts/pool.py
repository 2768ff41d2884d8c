"""Calling the configured experts: one call with its row and its breaker, first-success fallback over a
ranked list, and fan-out with a deadline.

Plain messages and parameters go in; answers and call rows (`ExpertCall`, appended to the caller's list
as each call starts) come out. Nothing here knows the gateway's request or decision types.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from experts.breaker import Breakers
from experts.client import ExpertClients, ExpertFailure
from experts.health import HealthMonitor
from experts.registry import ExpertConfig

_T = TypeVar("_T")
Chunks = AsyncGenerator[dict[str, Any], None]


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@dataclass
class ExpertCall:
    """One call to one expert, as the decision log keeps it."""

    attempt: int
    expert: str
    started_at: datetime
    status: str = "pending"
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def answered(self, started: float, usage: Mapping[str, Any] | None) -> None:
        self.status, self.latency_ms = "ok", ms_since(started)
        self.took(usage)

    def took(self, usage: Mapping[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens, self.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")


@dataclass(frozen=True)
class Answer:
    """One expert's complete answer: an OpenAI chat completion dict."""

    expert: str
    payload: dict[str, Any]

    @property
    def text(self) -> str:
        choices = self.payload.get("choices") or [{}]
        return (choices[0].get("message") or {}).get("content") or ""


class AllFailed(Exception):
    """Every expert tried failed (or one failed in a way that forbids trying the next): the failures, in order."""

    def __init__(self, failures: list[ExpertFailure]) -> None:
        super().__init__(", ".join(f.kind for f in failures))
        self.failures = failures


class ExpertPool:
    def __init__(self, experts: Sequence[ExpertConfig], breakers: Breakers, health: HealthMonitor) -> None:
        self.experts = {e.name: e for e in experts}
        self.clients = ExpertClients(experts)
        self.breakers = breakers
        self.health = health

    def __contains__(self, name: object) -> bool:
        return name in self.experts

    async def aclose(self) -> None:
        await self.clients.aclose()

    async def up_first(self, names: list[str]) -> list[str]:
        """`names` with the experts known to be down (probe or breaker) moved last."""
        tripped = await self.breakers.open_breakers(names)
        up = [n for n in names if self.health.status[n].healthy and n not in tripped]
        return up + [n for n in names if n not in up]

    def cost_usd(self, calls: Sequence[ExpertCall]) -> float | None:
        """What the calls that say how many tokens they took cost at their experts' prices; None when none says."""
        priced = [c for c in calls if c.prompt_tokens is not None and c.completion_tokens is not None]
        if not priced:
            return None
        return sum(
            ((c.prompt_tokens or 0) + (c.completion_tokens or 0)) * self.experts[c.expert].price_per_mtok / 1e6
            for c in priced
        )

    async def call(
        self, calls: list[ExpertCall], name: str, request: Callable[[], Awaitable[_T]]
    ) -> tuple[ExpertCall, float, _T]:
        """One expert call, appended to `calls` as it starts and counted by the expert's breaker; an ExpertFailure
        is raised on, the row saying what went wrong (or that it was cancelled)."""
        call = ExpertCall(attempt=len(calls), expert=name, started_at=datetime.now(UTC))
        calls.append(call)
        started = time.perf_counter()
        try:
            result = await request()
        except ExpertFailure as failure:
            call.status, call.error, call.latency_ms = failure.kind, str(failure), ms_since(started)
            if failure.can_fall_back:
                await self.breakers.record_failure(name)
            raise
        except asyncio.CancelledError:
            call.status, call.latency_ms = "cancelled", ms_since(started)
            raise
        await self.breakers.record_success(name)
        return call, started, result

    async def broke(self, call: ExpertCall, failure: ExpertFailure) -> None:
        """A stream that broke after its first chunk: the row says so and the breaker counts it."""
        call.status, call.error = failure.kind, str(failure)
        await self.breakers.record_failure(call.expert)

    async def first_success(
        self, calls: list[ExpertCall], candidates: list[str], attempt: Callable[[str], Awaitable[_T]]
    ) -> tuple[ExpertCall, float, _T]:
        """Try the candidates in order until one answers; falls back only on failures that allow it."""
        failures: list[ExpertFailure] = []
        for name in candidates:
            try:
                return await self.call(calls, name, lambda name=name: attempt(name))
            except ExpertFailure as failure:
                failures.append(failure)
                if not failure.can_fall_back:
                    break
        raise AllFailed(failures)

    async def complete(
        self, calls: list[ExpertCall], candidates: list[str], messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> tuple[ExpertCall, Answer]:
        """The first candidate's whole answer, and its call's row (settled)."""
        call, started, payload = await self.first_success(
            calls, candidates, lambda name: self.clients[name].complete(messages, params)
        )
        call.answered(started, payload.get("usage"))
        return call, Answer(call.expert, payload)

    async def open_stream(
        self, calls: list[ExpertCall], candidates: list[str], messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> tuple[ExpertCall, float, Chunks, dict[str, Any]]:
        """The first candidate's stream with its first chunk in hand: until then another can still be tried."""

        async def first_chunk(name: str) -> tuple[Chunks, dict[str, Any]]:
            chunks = self.clients[name].stream(messages, params)
            try:
                return chunks, await anext(chunks)
            except StopAsyncIteration:
                await chunks.aclose()
                raise ExpertFailure("bad_response", "empty stream", 502) from None
            except BaseException:
                await chunks.aclose()
                raise

        call, started, (chunks, first) = await self.first_success(calls, candidates, first_chunk)
        return call, started, chunks, first

    async def fan_out(
        self,
        calls: list[ExpertCall],
        experts: list[str],
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        deadline_s: float,
    ) -> list[Answer]:
        """Ask these experts at once; the answers with text that came back before the deadline, in their order."""

        async def ask(name: str) -> dict[str, Any] | None:
            try:  # cancelled past the deadline, or when the client hangs up
                call, started, payload = await self.call(
                    calls, name, lambda: self.clients[name].complete(messages, params)
                )
            except ExpertFailure:
                return None
            call.answered(started, payload.get("usage"))
            return payload

        tasks = [asyncio.create_task(ask(name)) for name in experts]
        try:
            await asyncio.wait(tasks, timeout=deadline_s)
        finally:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let cancelled calls record themselves
        answers = [
            Answer(name, payload)
            for name, task in zip(experts, tasks, strict=True)
            if not task.cancelled() and task.exception() is None and (payload := task.result()) is not None
        ]
        return [answer for answer in answers if answer.text]
