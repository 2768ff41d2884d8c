"""The closed-loop streaming client of bench/gpu_overhead.py: each request timed as the client sees it (first content
chunk, [DONE]), one measured window run and pooled into its figures, and the wait until the GPU upstream is idle.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness import Target, latency_stats

CLIENT_TIMEOUT_S = 300.0
IDLE_TIMEOUT_S = 120.0
MAX_STRETCH = 3.0  # a measured window runs at most this many times --duration (see closed_loop)


@dataclass
class Answer:
    """One request as the client saw it (times from the loop's clock, in seconds)."""

    sent: float
    first_token: float | None = None
    done: float | None = None  # set once the whole answer arrived ([DONE] after the finish chunk)
    tokens: int = 0
    error: str | None = None
    expert: str | None = None


@dataclass
class Load:
    """What one closed-loop measurement collects."""

    answers: list[Answer] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # every content chunk's arrival
    begin: float = 0.0  # the measured window
    end: float = 0.0


async def ask(
    session: aiohttp.ClientSession, target: Target, prompt: str, max_tokens: int, expect_tokens: int | None, load: Load
) -> Answer:
    """One streamed request, recorded in `load` (the answer's `done` is set only when it is whole and right)."""
    loop = asyncio.get_running_loop()
    answer = Answer(loop.time())
    load.answers.append(answer)
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        answer.error = await _read_stream(session, target, body, answer, load)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    if answer.error is None and expect_tokens is not None and answer.tokens != expect_tokens:
        answer.error = f"{answer.tokens} tokens, not {expect_tokens}"
    if answer.error is None:
        answer.done = loop.time()
    return answer


async def _read_stream(
    session: aiohttp.ClientSession, target: Target, body: dict[str, Any], answer: Answer, load: Load
) -> str | None:
    """Reads the SSE answer into `answer` (tokens timed on arrival); what was wrong with it, if anything."""
    loop = asyncio.get_running_loop()
    async with session.post(target.url, json=body) as response:
        answer.expert = response.headers.get("x-moe-expert")
        if response.status != 200:
            return f"HTTP {response.status}: {(await response.text())[:200]}"
        finished = usage_tokens = None
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = loop.time()
                    answer.first_token = answer.first_token or now
                    answer.tokens += 1
                    load.token_times.append(now)
                finished = choice.get("finish_reason") or finished
        else:
            return "the stream ended without [DONE]"
    answer.tokens = usage_tokens or answer.tokens
    return None if finished is not None else "no finish_reason"


async def closed_loop(
    target: Target,
    prompts: Sequence[str],
    clients: int,
    warmup_s: float,
    duration_s: float,
    max_tokens: int,
    expect_tokens: int | None,
) -> Load:
    """`clients` clients for warmup + duration seconds, then until every request sent in the last `duration_s` (the
    window) has its answer, so that each was answered under the same load; what the window collected."""
    load = Load()
    order = itertools.count()  # every target gets the same questions in the same order
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup_s
    end = begin + duration_s
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    ) as session:

        async def client() -> None:
            while True:
                answer = await ask(
                    session, target, prompts[next(order) % len(prompts)], max_tokens, expect_tokens, load
                )
                if answer.error is not None:
                    await asyncio.sleep(0.1)  # a server that is down is not hammered

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(max(0.0, end - loop.time()))
        # A window shorter than one answer would hold no request: it runs on until it holds one per client.
        while sum(a.sent >= begin for a in load.answers) < clients and loop.time() < begin + MAX_STRETCH * duration_s:
            await asyncio.sleep(0.02)
        end = max(end, loop.time())
        while any(begin <= a.sent < end and a.done is None and a.error is None for a in load.answers):
            await asyncio.sleep(0.02)  # each ends within CLIENT_TIMEOUT_S, answered or failed
        for task in tasks:
            task.cancel()  # closes the open responses: the servers see their clients go
        await asyncio.gather(*tasks, return_exceptions=True)
    load.begin, load.end = begin, end
    return load


def summary(loads: Sequence[Load]) -> dict[str, Any]:
    """The figures of one target's measured windows (its passes), pooled."""
    duration = sum(w.end - w.begin for w in loads)
    measured = [a for w in loads for a in w.answers if w.begin <= a.sent < w.end and a.done is not None]
    completed = sum(1 for w in loads for a in w.answers if a.done is not None and w.begin <= a.done <= w.end)
    failed = [a for w in loads for a in w.answers if a.error is not None and a.sent < w.end]
    experts = Counter(a.expert for a in measured if a.expert)
    tokens = sum(1 for w in loads for t in w.token_times if w.begin <= t <= w.end)
    return {
        "answers_per_s": round(completed / duration, 3),
        "output_tokens_per_s": round(tokens / duration, 1),
        "completed_in_window": completed,
        "passes": len(loads),
        "drained_s": round(
            max(
                0.0,
                *(
                    max((a.done for a in w.answers if a.done and w.begin <= a.sent < w.end), default=w.end) - w.end
                    for w in loads
                ),
            ),
            2,
        ),
        "errors": len(failed),
        "first_error": failed[0].error if failed else None,
        "tokens_per_answer": {
            "min": min((a.tokens for a in measured), default=None),
            "max": max((a.tokens for a in measured), default=None),
        },
        "ttft": latency_stats([(a.first_token - a.sent) * 1000 for a in measured if a.first_token is not None]),
        "latency": latency_stats([(a.done - a.sent) * 1000 for a in measured if a.done is not None]),
        **({"experts": dict(experts)} if experts else {}),
        "window_s": round(duration, 2),
    }


async def wait_idle(session: aiohttp.ClientSession, health_url: str) -> float:
    """Seconds until the GPU upstream has no request in flight (a cancelled stream stops at its next token)."""
    started = time.monotonic()
    while time.monotonic() - started < IDLE_TIMEOUT_S:
        async with session.get(health_url) as response:
            if (await response.json())["in_flight"] == 0:
                return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the GPU upstream still had requests in flight after {IDLE_TIMEOUT_S:.0f} s")
