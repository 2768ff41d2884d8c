"""The soak's load generator: an open loop on aiohttp, sending at a fixed rate whatever the answers do (latency
counts from when a request was due, so a slow gateway cannot slow the generator down and hide it)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.harness import REQUEST_TIMEOUT_S, chat_body, latency_stats


# -- open loop: aiohttp ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds into the run), how long it took from then, how late the generator
    sent it, what went wrong."""

    due_s: float
    latency_ms: float
    late_ms: float
    stream: bool
    error: str | None  # None when a full answer came back


async def send(session: aiohttp.ClientSession, url: str, model: str, prompt: str, stream: bool) -> str | None:
    """One chat completion read to its end; the error's kind, or None if a complete answer came back."""
    try:
        async with session.post(url, json=chat_body(model, prompt, stream)) as response:
            if response.status != 200:
                await response.read()
                return f"http_{response.status}"
            if not stream:
                return None if (await response.json()).get("choices") else "no_choices"
            done = False
            async for raw in response.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b'data: {"error"'):
                    return "stream_error"
                done = done or line == b"data: [DONE]"
            return None if done else "stream_unfinished"
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: a body that is not JSON
        return type(exc).__name__


def summarise(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    return {
        "requests": len(samples),
        "errors": sum(s.error is not None for s in samples),
        "error_kinds": dict(Counter(s.error for s in samples if s.error is not None)),
        "rps": round(len(samples) / wall_s, 1),
        **latency_stats([s.latency_ms for s in samples]),
        "generator_late": {k.replace("_ms", ""): v for k, v in latency_stats([s.late_ms for s in samples]).items()
                           if k in ("p50_ms", "p99_ms", "max_ms")},
    }


async def open_loop(
    url: str,
    model: str,
    prompts: Sequence[str],
    rate: float,
    stream_fraction: float,
    on_sample: Callable[[Sample], None],
    seed: int = 0,
) -> None:
    """`len(prompts)` requests at `rate` per second, a seeded `stream_fraction` of them streamed.

    Each request's latency counts from when it was due, not from when the event loop got to it; `late_ms` is
    that difference (the generator's own delay). Connections are not the bottleneck: up to 512 may be open,
    beyond the gateway's in-flight limit.
    """
    pick = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        run_started = time.perf_counter()

        async def one(due_s: float, prompt: str, stream: bool) -> None:
            await asyncio.sleep(max(0.0, run_started + due_s - time.perf_counter()))
            late_ms = (time.perf_counter() - run_started - due_s) * 1000
            error = await send(session, url, model, prompt, stream)
            on_sample(Sample(due_s, (time.perf_counter() - run_started - due_s) * 1000, late_ms, stream, error))

        await asyncio.gather(*(one(i / rate, p, pick.random() < stream_fraction) for i, p in enumerate(prompts)))
