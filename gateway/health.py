"""Probes and metrics: `/healthz`, `/readyz`, `/metrics`.

Liveness: the process answers (a restart is the cure only when it does not). Readiness: this replica can serve
requests now (config, routers, an expert). The database and Redis are reported, not required: the decision log
buffers and spills while the database is down, and the cache and breakers fall back to this process while Redis
is, so taking every replica out of a Service for either would turn a survivable outage into a full one. The
decision log's own state says whether it drains (see DecisionLog.status).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.middleware import InFlight
from gateway.observability.metrics import GatewayMetrics
from gateway.services import Services

health_routes = APIRouter()


def _services(request: Request) -> Services | None:
    """None until start-up has built them."""
    return getattr(request.app.state, "services", None)


@health_routes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_routes.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    services = _services(request)
    if services is None:
        return JSONResponse({"ready": False, "checks": {"config": True, "routers": False}}, status_code=503)
    checks = {
        "config": True,
        "routers": len(services.routers) == len(services.config.routers),
        "experts": services.health.any_healthy(),
    }
    ready = all(checks.values())
    in_flight: InFlight = request.app.state.in_flight
    body: dict[str, Any] = {
        "ready": ready,
        "checks": checks,
        "redis": {"configured": services.state.configured, "reachable": services.state.redis_ok},
        "decision_log": services.decision_log.status().as_dict(),  # says whether the database answers
        "in_flight": in_flight.current,
        "router_versions": services.reloader.loaded(),
        "experts": {n: {"healthy": h.healthy, "error": h.error} for n, h in services.health.status.items()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@health_routes.get("/metrics")
async def prometheus(request: Request) -> Response:
    metrics: GatewayMetrics = request.app.state.metrics
    services = _services(request)
    if services is not None:
        in_flight: InFlight = request.app.state.in_flight
        metrics.observe_decision_log(services.decision_log.status())
        metrics.in_flight.set(in_flight.current)
        metrics.redis_up.set(1 if services.state.redis_ok else 0)
        metrics.overload_rejections.set(in_flight.rejected)
        # Breakers are read from where routing reads them (Redis, shared by the replicas, else this process), not
        # tracked from this replica's failures: the gauge shows breakers other replicas opened, and drops to 0 when
        # a cooldown ends even if no request has tried the expert since.
        tripped = await services.state.breakers.open_breakers(list(services.health.status))
        for name, health in services.health.status.items():
            metrics.expert_up.labels(name).set(1 if health.healthy else 0)
            metrics.breaker_open.labels(name).set(1 if name in tripped else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
