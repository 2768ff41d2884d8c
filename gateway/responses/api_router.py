"""`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: HTTP only. A response is routed as the chat
completion it translates to (gateway/responses/translate.py) and answered by its dialect; a stored one is visible to
its tenant only, and anyone else's, like an unknown id, answers 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.bodies import BodyReader, json_body
from gateway.errors import APIError
from gateway.keys.guard import BEARER_SECURITY, caller, metered_caller
from gateway.keys.store import ApiKey
from gateway.responses.dialect import ResponsesDialect
from gateway.responses.protocol import DeletedResponse, ResponsesRequest
from gateway.responses.store import ResponseStore, StoredResponse, visible_to
from gateway.responses.translate import to_chat
from gateway.services import Services
from gateway.store_calls import StoreCalls

responses_routes = APIRouter()



# The body is read by gateway/bodies.py, as chat's is (see gateway/chat/api_router.py).
@responses_routes.post(
    "/v1/responses", response_model=None, openapi_extra={**json_body(ResponsesRequest), "security": BEARER_SECURITY}
)
async def create_response(request: Request) -> Response:
    key = await metered_caller(request)
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), ResponsesRequest)
    services: Services = request.app.state.services
    store = services.responses
    earlier: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        earlier = (await _owned(store, body.previous_response_id, key, param="previous_response_id")).messages
    translated = to_chat(body, earlier)
    dialect = ResponsesDialect(body, translated.conversation, store if body.store else None)
    if body.stream:
        return await services.chat.stream(translated.request, request, key, dialect)
    return await services.chat.complete(translated.request, request, key, dialect)


@responses_routes.get("/v1/responses/{response_id}")
async def get_response(
    response_id: str, request: Request, key: Annotated[ApiKey | None, Depends(caller)]
) -> dict[str, Any]:
    return (await _owned(request.app.state.services.responses, response_id, key)).response


@responses_routes.delete("/v1/responses/{response_id}")
async def delete_response(
    response_id: str, request: Request, key: Annotated[ApiKey | None, Depends(caller)]
) -> DeletedResponse:
    store: ResponseStore = request.app.state.services.responses
    await _owned(store, response_id, key)
    await _in_thread(store.delete, response_id)
    return DeletedResponse(id=response_id)


async def _owned(
    store: ResponseStore, response_id: str, key: ApiKey | None, param: str | None = None
) -> StoredResponse:
    stored = await _in_thread(store.get, response_id)
    if stored is None or not visible_to(key, stored):
        raise APIError(404, f"No response `{response_id}`.", param=param, code="response_not_found")
    return stored


_in_thread = StoreCalls(
    "responses", "Stored responses cannot be read right now; retry shortly.", "response_store_unavailable"
)
