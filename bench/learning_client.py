"""The learning benchmark's clients, on aiohttp: one that sends questions and rates each answer as a user would
(`POST /v1/feedback` with the answering expert's recorded correctness), and one that keeps traffic flowing while a
router version is promoted, noting which version answered each request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bench.harness import REQUEST_TIMEOUT_S, chat_body

FEEDBACK_SOURCE = "pool"  # the simulator's feedback: the pool's recorded correctness


@dataclass(frozen=True)
class Exchange:
    """One question sent and its answer rated."""

    row: int  # the question's pool row
    decision_id: str | None
    expert: str | None  # x-moe-expert: the expert that answered
    router: str | None  # x-moe-router: router@version that decided
    explored: bool  # x-moe-explored: the answer came from an expert other than the router's first choice
    reward: float | None  # the feedback posted
    error: str | None  # None when the answer and its feedback both went through


@dataclass(frozen=True)
class Observed:
    """One request of the traffic kept up during a promotion."""

    sent_s: float  # seconds since the traffic started
    router: str | None
    error: str | None


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                 timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


async def _ask(
    session: aiohttp.ClientSession, base_url: str, model: str, prompt: str
) -> tuple[dict[str, str], str | None]:
    """One chat completion: its headers, and the error's kind (None for a full answer)."""
    try:
        async with session.post(f"{base_url}/v1/chat/completions", json=chat_body(model, prompt)) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                return dict(response.headers), f"http_{response.status}"
            return dict(response.headers), None if body.get("choices") else "no_choices"
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: a body that is not JSON
        return {}, type(exc).__name__


async def _rate(session: aiohttp.ClientSession, base_url: str, decision_id: str, reward: float) -> str | None:
    try:
        feedback = {"decision_id": decision_id, "score": reward, "source": FEEDBACK_SOURCE}
        async with session.post(f"{base_url}/v1/feedback", json=feedback) as response:
            await response.read()
            return None if response.status == 200 else f"feedback_http_{response.status}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"feedback_{type(exc).__name__}"


async def send_and_rate(
    base_url: str,
    model: str,
    rows: Sequence[int],
    prompt_of: Callable[[int], str],
    reward_of: Callable[[int, str], float],
    concurrency: int,
    on_done: Callable[[Exchange], None],
) -> list[Exchange]:
    """Each row's question to `model`, at most `concurrency` at once; each answer rated by `reward_of(row, expert)`
    as soon as it comes back, the way a user's thumbs follow an answer."""
    gate = asyncio.Semaphore(concurrency)
    async with _session(concurrency) as session:

        async def one(row: int) -> Exchange:
            async with gate:
                headers, error = await _ask(session, base_url, model, prompt_of(row))
                decision_id, expert = headers.get("x-moe-decision-id"), headers.get("x-moe-expert")
                reward = None
                if error is None and (decision_id is None or expert is None):
                    error = "no_decision_headers"
                if error is None:
                    reward = reward_of(row, expert)
                    error = await _rate(session, base_url, decision_id, reward)
                exchange = Exchange(row, decision_id, expert, headers.get("x-moe-router"),
                                    headers.get("x-moe-explored") == "true", reward, error)
                on_done(exchange)
                return exchange

        return await asyncio.gather(*(one(row) for row in rows))


async def traffic_through(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    concurrency: int,
    change: Callable[[], Awaitable[None]],
    new_router: str,
    *,
    lead_s: float,
    settle_s: float,
    timeout_s: float,
) -> tuple[list[Observed], float]:
    """Requests from `concurrency` clients back to back, through `change()` (started after `lead_s`), until every
    answer for `settle_s` has come from `new_router` (or `timeout_s` after the change); the requests, and when the
    change was started (seconds since the traffic started)."""
    observed: list[Observed] = []
    started = time.perf_counter()
    stop = asyncio.Event()
    async with _session(concurrency) as session:

        async def client(first: int) -> None:
            turn = first
            while not stop.is_set():
                sent = time.perf_counter() - started
                headers, error = await _ask(session, base_url, model, prompts[turn % len(prompts)])
                observed.append(Observed(round(sent, 4), headers.get("x-moe-router"), error))
                turn += concurrency

        clients = [asyncio.create_task(client(i)) for i in range(concurrency)]
        await asyncio.sleep(lead_s)
        changed_s = time.perf_counter() - started
        await change()
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.2)
            now = time.perf_counter() - started
            recent = [o for o in observed if o.sent_s >= now - settle_s]
            first_new = next((o.sent_s for o in observed if o.router == new_router), None)
            if first_new is not None and now - first_new >= settle_s and all(o.router == new_router for o in recent):
                break
        stop.set()
        await asyncio.gather(*clients)
    return observed, round(changed_s, 4)
