"""`POST /v1/completions`, OpenAI's legacy completions, routed on the prompt: HTTP only; chat serving does the work.

Each prompt becomes a chat completion whose one user message is the prompt (gateway/completions/translate.py),
routed and answered by gateway/chat/serving.py with the completions dialect, so it leaves its own decision record
and takes the cache, fallback and multi-expert modes as a chat completion does. A list of prompts is answered as
OpenAI answers it, one choice per prompt (and per `n`), numbered in the prompts' order: each prompt is a request of
its own, routed on its own text, run concurrently with the others, and the replies joined
(gateway/completions/dialect.py: `x-moe-decision-id` then lists every prompt's record). The API key's rate limit
counts the HTTP request once; its spend counts every prompt's tokens. A streamed request takes one prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.bodies import BodyReader, json_body
from gateway.chat.relay import uncancel
from gateway.completions.dialect import CompletionDialect, joined
from gateway.completions.protocol import CompletionRequest
from gateway.completions.translate import chat_requests
from gateway.keys.guard import BEARER_SECURITY, metered_caller
from gateway.services import Services

completion_routes = APIRouter()


@completion_routes.post(
    "/v1/completions", response_model=None, openapi_extra={**json_body(CompletionRequest), "security": BEARER_SECURITY}
)
async def completions(request: Request) -> Response:
    key = await metered_caller(request)
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), CompletionRequest)
    chats = chat_requests(body)
    services: Services = request.app.state.services
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await services.chat.stream(chats[0], request, key, CompletionDialect(include_usage=include_usage))
    if len(chats) == 1:
        return await services.chat.complete(chats[0], request, key, CompletionDialect())
    per_prompt = body.n or 1
    return joined(
        await _concurrently(
            [
                services.chat.complete(chat, request, key, CompletionDialect(first_index=i * per_prompt))
                for i, chat in enumerate(chats)
            ]
        )
    )


async def _concurrently(replies: list[Coroutine[Any, Any, JSONResponse]]) -> list[JSONResponse]:
    """Every prompt's reply. Should the shutdown drain cancel the request, each prompt is cancelled in turn and
    answers as chat serving answers then (its record settled, a 503), so the client still gets a reply."""
    tasks = [asyncio.create_task(reply) for reply in replies]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        uncancel()
    # An error raised before routing (an unknown model) is every prompt's: gather raises the first.
    return await asyncio.gather(*tasks)
