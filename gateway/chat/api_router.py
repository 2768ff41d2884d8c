"""`POST /v1/chat/completions` and `GET /v1/models`: HTTP only; the work is gateway/chat/serving.py's."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.bodies import BodyReader, json_body
from gateway.chat.protocol import ChatCompletionRequest
from gateway.keys.guard import BEARER_SECURITY, caller, metered_caller
from gateway.services import Services

chat_routes = APIRouter()


# The body is read by gateway/bodies.py, not FastAPI (whose parser takes NaN and blocks the event loop on large
# bodies); the schema is still published, for clients and the fuzz.
@chat_routes.post("/v1/chat/completions", response_model=None,
                  openapi_extra={**json_body(ChatCompletionRequest), "security": BEARER_SECURITY})
async def chat_completions(request: Request) -> Response:
    key = await metered_caller(request)
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), ChatCompletionRequest)
    services: Services = request.app.state.services
    if body.stream:
        return await services.chat.stream(body, request, key)
    return await services.chat.complete(body, request, key)


@chat_routes.get("/v1/models", dependencies=[Depends(caller)])
async def list_models(request: Request) -> dict[str, Any]:
    services: Services = request.app.state.services
    created = int(time.time())
    virtual = [
        {"id": v.name, "object": "model", "created": created, "owned_by": "moe-gateway",
         "router": v.router, "description": v.description}
        for v in services.config.virtual_models
    ]
    experts = [
        {"id": e.name, "object": "model", "created": created, "owned_by": "moe-gateway",
         "healthy": services.health.status[e.name].healthy}
        for e in services.config.experts
    ]
    return {"object": "list", "data": virtual + experts}
