"""SIMULATION for bench.batch: an OpenAI-compatible server with room for one model at a time.

It stands for a fleet that loads models on demand (Ollama with OLLAMA_MAX_LOADED_MODELS=1,
llama-swap): requests are admitted in arrival order; one for a model other than the loaded one
waits until the loaded model's requests in flight have finished, then pays the swap delay, and the
requests behind it wait in line. An admitted request takes the generation time; requests for the
loaded model run side by side, as a batching engine serves them. With --resident every model stays
loaded (no waiting, no swaps): the always-loaded fleet. Answers are bench/upstream.py's echoes.
GET /stats counts requests and swaps (the first load counts as one).

    python -m bench.swap_upstream --port 9200 --swap-s 0.1 --gen-s 0.02 [--resident]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.upstream import chat as echo
from bench.upstream import models


class OneModelAtATime:
    def __init__(self, swap_s: float) -> None:
        self.swap_s = swap_s
        self.loaded: str | None = None
        self.swaps = 0
        self._admission = asyncio.Lock()  # wakes its waiters in arrival order
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def serving(self, model: str) -> AsyncIterator[None]:
        async with self._admission:
            if model != self.loaded:
                await self._idle.wait()  # the loaded model's requests finish before it is unloaded
                await asyncio.sleep(self.swap_s)
                self.loaded, self.swaps = model, self.swaps + 1
            self._in_flight += 1
            self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()


def create_app(swap_s: float, gen_s: float, resident: bool) -> Starlette:
    slot = OneModelAtATime(swap_s)
    served = 0

    async def chat(request: Request) -> Response:
        nonlocal served
        model = (await request.json())["model"]
        if resident:
            await asyncio.sleep(gen_s)
        else:
            async with slot.serving(model):
                await asyncio.sleep(gen_s)
        served += 1
        return await echo(request)

    async def stats(_: Request) -> Response:
        return JSONResponse({"requests": served, "swaps": slot.swaps})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models),
                             Route("/stats", stats)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--swap-s", type=float, default=0.1, help="seconds to load another model")
    parser.add_argument("--gen-s", type=float, default=0.02, help="seconds one request takes once admitted")
    parser.add_argument("--resident", action="store_true", help="every model always loaded: no swaps")
    args = parser.parse_args()
    uvicorn.run(create_app(args.swap_s, args.gen_s, args.resident), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
