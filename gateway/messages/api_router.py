"""`POST /v1/messages` and `POST /v1/messages/count_tokens`, Anthropic's Messages API: HTTP only. A message is
routed as a chat completion (gateway/messages/translate.py, then gateway/chat/serving.py) and answered on
Anthropic's wire (gateway/messages/dialect.py). Keys come as `x-api-key`, as Anthropic's SDKs send them, or as a
bearer token; `anthropic-version` is accepted whatever its value and `anthropic-beta` ignored. Errors on these
paths take Anthropic's shape (gateway/errors.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.bodies import BodyReader, json_body
from gateway.keys.guard import BEARER_SECURITY, caller, metered_caller
from gateway.messages.dialect import MessagesDialect
from gateway.messages.protocol import (
    AnthropicCountTokensRequest,
    AnthropicCountTokensResponse,
    AnthropicMessage,
    AnthropicMessagesRequest,
)
from gateway.messages.tokens import estimate_input_tokens
from gateway.messages.translate import chat_messages, chat_request, chat_tools
from gateway.services import Services

messages_routes = APIRouter()


# Bodies are read by gateway/bodies.py, as the chat endpoint's are (its comment says why); the schemas are published.
@messages_routes.post(
    "/v1/messages",
    response_model=None,
    responses={200: {"model": AnthropicMessage}},
    openapi_extra={**json_body(AnthropicMessagesRequest), "security": BEARER_SECURITY},
)
async def create_message(request: Request) -> Response:
    key = await metered_caller(request)
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), AnthropicMessagesRequest)
    chat = chat_request(body)
    dialect = MessagesDialect(body.stop_sequences or ())
    services: Services = request.app.state.services
    if body.stream:
        return await services.chat.stream(chat, request, key, dialect)
    return await services.chat.complete(chat, request, key, dialect)


@messages_routes.post(
    "/v1/messages/count_tokens", dependencies=[Depends(caller)], openapi_extra=json_body(AnthropicCountTokensRequest)
)
async def count_tokens(request: Request) -> AnthropicCountTokensResponse:
    """An estimate (gateway/messages/tokens.py says how); not routed, so no decision is recorded. The model must be
    one the gateway serves."""
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), AnthropicCountTokensRequest)
    services: Services = request.app.state.services
    services.chat.targets.resolve(body.model)
    return AnthropicCountTokensResponse(input_tokens=estimate_input_tokens(chat_messages(body), chat_tools(body.tools)))
