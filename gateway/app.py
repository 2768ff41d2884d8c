"""The FastAPI application: HTTP only. The logic lives in serving.py, the schema in protocol.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from experts.health import HealthMonitor
from gateway.bodies import BodyReader, json_body, with_body_schemas
from gateway.config import GatewayConfig, load_config
from gateway.decision_log import DecisionLog, make_engine
from gateway.errors import BodyLimit, install_error_handlers
from gateway.keys import ApiKey, KeyGuard, KeyStore, admin_routes, caller, metered_caller
from gateway.metrics import GatewayMetrics
from gateway.overload import InFlight, InFlightLimit
from gateway.protocol import ChatCompletionRequest
from gateway.rate_limit import RateLimiter
from gateway.serving import ChatService
from gateway.settings import Settings
from gateway.shared_state import BreakerSettings, SharedState
from routers import Router, load_router
from routers.policy import parse_knob

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.tracing import RequestTracer

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The gateway cannot start; the message says what to fix."""


def check_artifacts(config: GatewayConfig) -> None:
    """Every configured router has a trained artifact, else a StartupError saying how to train it."""
    for rc in config.routers:
        if not rc.artifact.is_dir():
            raise StartupError(
                f"router {rc.name!r}: no trained artifact at {rc.artifact}; "
                f"train one with `moe router train --out {rc.artifact}`"
            )


def load_routers(config: GatewayConfig) -> dict[str, Router]:
    check_artifacts(config)
    profiles = [e.profile() for e in config.experts]
    routers: dict[str, Router] = {}
    for rc in config.routers:
        routers[rc.name] = load_router(rc.artifact, profiles)
        log.info("router %s loaded (%s@%s)", rc.name, routers[rc.name].name, routers[rc.name].version)
    for vm in config.virtual_models:
        manifest = routers[vm.router].manifest
        if vm.policy:
            try:
                parse_knob(vm.policy, manifest.params.get("calibration") if manifest else None)
            except ValueError as exc:
                raise StartupError(f"virtual model {vm.name!r}: {exc}") from None
    return routers


def create_app(
    settings: Settings | None = None, config: GatewayConfig | None = None, *, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """The gateway; with MOE_OTEL on, spans go to `span_exporter` (default: OTLP per the OTEL_* variables)."""
    settings = settings or Settings()
    config = config or load_config(settings.moe_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        routers = await asyncio.to_thread(load_routers, config)
        decision_log = DecisionLog(
            make_engine(settings.database_url),
            settings.moe_spill_dir,
            max_buffer=settings.moe_log_buffer,
            flush_interval_s=settings.moe_log_flush_s,
        )
        health = HealthMonitor(config.experts, settings.moe_health_interval_s)
        breaker = BreakerSettings(
            settings.moe_breaker_threshold, settings.moe_breaker_window_s, settings.moe_breaker_cooldown_s
        )
        state = SharedState(settings.redis_url, cache_ttl_s=settings.moe_cache_ttl_s, breaker=breaker)
        keys = KeyGuard(KeyStore(decision_log.engine), RateLimiter(state),
                        required=settings.moe_require_api_key, cache_ttl_s=settings.moe_key_cache_ttl_s)
        await decision_log.start()
        await health.start()
        await state.start()
        await keys.start()
        app.state.keys = keys
        app.state.service = ChatService(
            config, routers, decision_log, health, state, keys=keys, metrics=metrics,
            log_prompts=settings.moe_log_prompts, tracer=tracer,
        )
        # What start-up built (torch, litellm, the routers: ~480k objects) lives as long as the process, and a full
        # garbage collection scanning it held the event loop for ~300 ms. Frozen, collections scan only what
        # requests allocate.
        gc.freeze()
        try:
            yield
        finally:
            bodies.close()
            await app.state.service.aclose()
            await health.stop()
            await keys.stop()  # before Redis and the database it writes to go away
            await state.stop()
            await decision_log.stop()
            if tracer is not None:
                await asyncio.to_thread(tracer.shutdown)

    metrics = GatewayMetrics()
    bodies = BodyReader()
    app = FastAPI(title="moe-gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.moe_max_body_bytes)
    in_flight = InFlight(settings.moe_max_in_flight)
    app.add_middleware(InFlightLimit, state=in_flight)
    tracer: RequestTracer | None = None  # off: no middleware, no spans, the instrumentation never imported
    if settings.moe_otel:
        from gateway.tracing import install as install_tracing

        tracer = install_tracing(app, span_exporter)
    app.include_router(admin_routes)

    # The body is read by gateway/bodies.py, not FastAPI (whose parser takes NaN and blocks the event loop on
    # large bodies); the schema is still published, for clients and the fuzz.
    @app.post("/v1/chat/completions", response_model=None, openapi_extra=json_body(ChatCompletionRequest))
    async def chat_completions(request: Request, key: Annotated[ApiKey | None, Depends(metered_caller)]) -> Response:
        body = await bodies.read(await request.body(), ChatCompletionRequest)
        service: ChatService = request.app.state.service
        if body.stream:
            return await service.stream(body, request, key)
        return await service.complete(body, request, key)

    @app.get("/v1/models", dependencies=[Depends(caller)])
    async def list_models(request: Request) -> dict[str, Any]:
        service: ChatService = request.app.state.service
        created = int(time.time())
        virtual = [
            {"id": v.name, "object": "model", "created": created, "owned_by": "moe-gateway",
             "router": v.router, "description": v.description}
            for v in config.virtual_models
        ]
        experts = [
            {"id": e.name, "object": "model", "created": created, "owned_by": "moe-gateway",
             "healthy": service.health.status[e.name].healthy}
            for e in config.experts
        ]
        return {"object": "list", "data": virtual + experts}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        service: ChatService | None = getattr(request.app.state, "service", None)
        if service is not None:
            metrics.observe_decision_log(service.decision_log.status())
            metrics.in_flight.set(in_flight.current)
            metrics.redis_up.set(1 if service.state.redis_ok else 0)
            metrics.overload_rejections.set(in_flight.rejected)
            # Breakers are read from where routing reads them (Redis, shared by the replicas, else this process),
            # not tracked from this replica's failures: the gauge shows breakers other replicas opened, and drops
            # to 0 when a cooldown ends even if no request has tried the expert since.
            tripped = await service.state.open_breakers(list(service.health.status))
            for name, health in service.health.status.items():
                metrics.expert_up.labels(name).set(1 if health.healthy else 0)
                metrics.breaker_open.labels(name).set(1 if name in tripped else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Liveness: the process answers (a restart is the cure only when it does not). Readiness: this replica can
    # serve requests now (config, routers, an expert). The database and Redis are reported, not required: the
    # decision log buffers and spills while the database is down, and the cache and breakers fall back to this
    # process while Redis is, so taking every replica out of a Service for either would turn a survivable outage
    # into a full one. The decision log's own state says whether it drains (see DecisionLog.status).
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        service: ChatService | None = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"ready": False, "checks": {"config": True, "routers": False}}, status_code=503)
        checks = {
            "config": True,
            "routers": len(service.routers) == len(config.routers),
            "experts": service.health.any_healthy(),
        }
        ready = all(checks.values())
        return JSONResponse(
            {
                "ready": ready,
                "checks": checks,
                "database": {"reachable": service.decision_log.db_ok},
                "redis": {"configured": service.state.configured, "reachable": service.state.redis_ok},
                "decision_log": service.decision_log.status().as_dict(),
                "in_flight": in_flight.current,
                "experts": {n: {"healthy": h.healthy, "error": h.error} for n, h in service.health.status.items()},
            },
            status_code=200 if ready else 503,
        )

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_body_schemas(original_openapi(), [ChatCompletionRequest])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
