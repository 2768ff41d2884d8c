"""The FastAPI application: middleware, the endpoints' routers, and the services built at start-up (services.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from gateway.batch.api_router import batch_routes
from gateway.batch.protocol import BatchCreateRequest
from gateway.bodies import BodyReader, with_body_schemas
from gateway.chat.api_router import chat_routes
from gateway.chat.protocol import ChatCompletionRequest
from gateway.completions.api_router import completion_routes
from gateway.completions.protocol import CompletionRequest
from gateway.config import GatewayConfig, load_config
from gateway.errors import install_error_handlers
from gateway.feedback.api_router import feedback_routes
from gateway.feedback.protocol import FeedbackRequest
from gateway.health import health_routes
from gateway.keys.guard import admin_routes
from gateway.messages.api_router import messages_routes
from gateway.messages.protocol import AnthropicCountTokensRequest, AnthropicMessagesRequest
from gateway.middleware import BodyLimit, InFlight, InFlightLimit
from gateway.observability.metrics import GatewayMetrics
from gateway.responses.api_router import responses_routes
from gateway.responses.protocol import ResponsesRequest
from gateway.services import Services, load_routers
from gateway.settings import Settings
from gateway.ui.api_router import ui_api_routes
from gateway.ui.pages import page_routes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.observability.tracing import RequestTracer


MULTIPART_FRAMING_BYTES = 64 * 1024  # boundaries, part headers and the form's other fields


def create_app(
    settings: Settings | None = None, config: GatewayConfig | None = None, *, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """The gateway; with MOE_OTEL on, spans go to `span_exporter` (default: OTLP per the OTEL_* variables)."""
    settings = settings or Settings()
    config = config or load_config(settings.moe_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routers = await asyncio.to_thread(load_routers, config)
        services = Services.build(settings, config, routers, metrics=app.state.metrics, tracer=tracer)
        await services.start()
        app.state.keys = services.keys
        app.state.services = services
        # What start-up built (the routers, the app: ~480k objects with the heavier routers) lives as long as the
        # process, and a full garbage collection scanning it held the event loop for ~300 ms. Frozen, collections
        # scan only what requests allocate; `moe serve` starts with collection off (gateway/cli.py).
        gc.freeze()
        gc.enable()
        try:
            yield
        finally:
            app.state.bodies.close()
            await services.stop()
            if tracer is not None:
                await asyncio.to_thread(tracer.shutdown)

    app = FastAPI(title="moe-gateway", version="0.1.0", lifespan=lifespan)
    app.state.metrics = GatewayMetrics()
    app.state.bodies = BodyReader()
    app.state.in_flight = InFlight(settings.moe_max_in_flight)
    install_error_handlers(app)
    # An upload's body is the file and its multipart framing: the file's own limit is checked where it is parsed.
    upload_bytes = settings.moe_max_file_bytes + MULTIPART_FRAMING_BYTES
    app.add_middleware(BodyLimit, max_bytes=settings.moe_max_body_bytes, uploads=("/v1/files", upload_bytes))
    app.add_middleware(InFlightLimit, state=app.state.in_flight)
    tracer: RequestTracer | None = None  # off: no middleware, no spans, the instrumentation never imported
    if settings.moe_otel:
        from gateway.observability.tracing import install as install_tracing

        tracer = install_tracing(app, span_exporter)
    app.include_router(chat_routes)
    app.include_router(completion_routes)
    app.include_router(messages_routes)
    app.include_router(responses_routes)
    app.include_router(batch_routes(settings))
    app.include_router(feedback_routes)
    app.include_router(admin_routes)
    app.include_router(health_routes)
    app.include_router(ui_api_routes)
    app.include_router(page_routes)

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_body_schemas(
                original_openapi(),
                [ChatCompletionRequest, CompletionRequest, AnthropicMessagesRequest, AnthropicCountTokensRequest,
                 ResponsesRequest, FeedbackRequest, BatchCreateRequest],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
