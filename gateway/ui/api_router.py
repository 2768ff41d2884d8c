"""The dashboard's JSON API under /ui/api: HTTP only (the SQL is queries.py's and stats.py's).

Every call takes an API key (a bearer header), whether or not /v1 requests need one. An admin key sees every
tenant (with an optional `tenant` filter) and the operator views; any other key sees its own tenant's decisions,
their detail and their feedback only: another tenant's decision is a 404, as if it did not exist, and the operator
views (experts, router versions, evaluation, promote and revert) a 403. Reads run in worker threads; a database
that does not answer is a 503 in OpenAI's shape.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from gateway.bodies import BodyReader
from gateway.errors import APIError
from gateway.keys.guard import KeyGuard, presented_key
from gateway.keys.store import ApiKey
from gateway.services import Services
from gateway.store_calls import StoreCalls
from gateway.ui.protocol import (
    ABStats,
    Caller,
    CallView,
    CostBucket,
    CurvePoint,
    DecisionDetail,
    DecisionPage,
    EvaluationView,
    ExpertStats,
    ExpertsView,
    FeedbackBucket,
    FeedbackBuckets,
    LivePoint,
    PromoteRequest,
    RoutersView,
    RouterView,
    ShadowStats,
    VersionChanged,
    VersionView,
)
from gateway.ui.queries import Cursor, DecisionFilter, DecisionQueries
from gateway.ui.stats import WindowStats
from migrations.router_versions import RouterVersions, VersionError, VersionInfo

STATS_WINDOW = timedelta(hours=24)  # shadow agreement, A/B traffic and the live operating point
COST_BUCKETS = 30  # intervals of the experts' cost over time
MAX_BUCKETS = 2_000  # intervals one feedback chart may ask for



_read = StoreCalls(
    "dashboard", "The decision log cannot be read right now; retry shortly.", "decision_log_unavailable"
)


async def dashboard_caller(request: Request) -> ApiKey:
    guard: KeyGuard = request.app.state.keys
    return await guard.authenticate(presented_key(request))


async def operator_caller(key: Annotated[ApiKey, Depends(dashboard_caller)]) -> ApiKey:
    if not key.admin:
        raise APIError(403, "This view needs an admin key.", code="insufficient_permissions")
    return key


Key = Annotated[ApiKey, Depends(dashboard_caller)]
Operator = Annotated[ApiKey, Depends(operator_caller)]
NO_NUL = r"^[^\x00]*$"  # PostgreSQL refuses the NUL character in text: a 400 here, not a database error
Name = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]


def _services(request: Request) -> Services:
    return request.app.state.services


def _scope(key: ApiKey) -> str | None:
    """The tenant a key is confined to; None for an admin's."""
    return None if key.admin else key.tenant


ui_api_routes = APIRouter(prefix="/ui/api", include_in_schema=False)


@ui_api_routes.get("/me")
async def me(key: Key) -> Caller:
    return Caller(key_id=key.id, name=key.name, tenant=key.tenant, admin=key.admin)


@ui_api_routes.get("/decisions")
async def decisions(
    request: Request,
    key: Key,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    virtual_model: Name = None,
    expert: Name = None,
    status: Name = None,
    router_version: Name = None,
    tenant: Name = None,
) -> DecisionPage:
    """Newest first; `cursor` (a page's `next_cursor`) for the next, older page. An empty filter is no filter."""
    try:
        after = Cursor.decode(cursor) if cursor else None
    except ValueError:
        raise APIError(
            400, "Invalid `cursor`: pass a page's `next_cursor` as it came.", param="cursor", code="invalid_cursor"
        ) from None
    where = DecisionFilter(
        scope=_scope(key),
        tenant=tenant or None,
        virtual_model=virtual_model or None,
        expert=expert or None,
        status=status or None,
        router_version=router_version or None,
    )
    queries = DecisionQueries(_services(request).decision_log.engine)
    page, following = await _read(queries.page, where, limit, after)
    return DecisionPage(data=page, next_cursor=following.encode() if following else None)


@ui_api_routes.get("/decisions/{decision_id}")
async def decision(
    decision_id: Annotated[str, Path(max_length=36, pattern=NO_NUL)], request: Request, key: Key
) -> DecisionDetail:
    services = _services(request)
    found = await _read(DecisionQueries(services.decision_log.engine).decision, decision_id, _scope(key))
    if found is None:
        raise APIError(404, f"No decision `{decision_id}`.", param="decision_id", code="decision_not_found")
    pool = services.pool
    calls = [
        CallView(
            expert=c.expert,
            status=c.status,
            latency_ms=c.latency_ms,
            ttft_ms=c.ttft_ms,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            error=c.error,
            started_at=c.started_at,
            cost_usd=pool.cost_usd([c]) if c.expert in pool else None,
        )
        for c in found.calls
    ]
    return DecisionDetail(decision=found.record, calls=calls, feedback=found.feedback)


@ui_api_routes.get("/experts")
async def experts(
    request: Request,
    _: Operator,
    window_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
) -> ExpertsView:
    """Every configured expert (and any other the window's decisions name), with its traffic, latency, errors, cost,
    health and breaker; cost over time in about COST_BUCKETS intervals."""
    services = _services(request)
    now = datetime.now(UTC)
    step_s = math.ceil(window_minutes / COST_BUCKETS) * 60
    window = await _read(
        WindowStats(services.decision_log.engine).experts, now - timedelta(minutes=window_minutes), step_s
    )
    configured = [e.name for e in services.config.experts]
    seen = {name for name in window.answered if name is not None} | set(window.calls)
    names = configured + sorted(seen - set(configured))
    tripped = await services.pool.breakers.open_breakers(configured)
    total = sum(n for n, _ in window.answered.values())
    stats = []
    for name in names:
        answered, usd = window.answered.get(name, (0, 0.0))
        calls = window.calls.get(name)
        health = services.health.status.get(name)
        stats.append(
            ExpertStats(
                name=name,
                requests=answered,
                share=answered / total if total else 0.0,
                p50_ms=calls.p50_ms if calls else None,
                p99_ms=calls.p99_ms if calls else None,
                errors=calls.errors if calls else 0,
                error_rate=calls.errors / calls.calls if calls else None,
                cost_usd=usd,
                healthy=bool(health and health.healthy),
                breaker_open=name in tripped,
            )
        )
    first, last = int((now - timedelta(minutes=window_minutes)).timestamp()) // step_s, int(now.timestamp()) // step_s
    buckets = [
        CostBucket(
            bucket_start=datetime.fromtimestamp(b * step_s, UTC),
            expert=name,
            requests=window.buckets.get((b, name), (0, 0.0))[0],
            cost_usd=window.buckets.get((b, name), (0, 0.0))[1],
        )
        for b in range(first, last + 1)
        for name in names
    ]
    return ExpertsView(window_minutes=window_minutes, experts=stats, cost_over_time=buckets)


@ui_api_routes.get("/routers")
async def routers(request: Request, _: Operator) -> RoutersView:
    """Each configured router: what this replica serves, and its versions with their metrics, shadow agreement and
    A/B traffic over the last STATS_WINDOW."""
    services = _services(request)
    engine = services.decision_log.engine
    versions = await _read(RouterVersions(engine).list)
    since = datetime.now(UTC) - STATS_WINDOW
    stats = WindowStats(engine)
    trials = [v.version for v in versions if v.status == "candidate" and v.traffic_share]
    requests = await _read(stats.version_requests, trials, since)
    shadowed = {
        shadow.rpartition("@")[2]: counts for shadow, counts in (await _read(stats.shadow_agreement, since)).items()
    }
    views = []
    for rc in services.config.routers:
        served = services.routers[rc.name]
        views.append(
            RouterView(
                name=rc.name,
                serving=f"{served.name}@{served.version}",
                versions=[
                    _version_view(v, shadowed.get(v.version), requests.get(v.version, 0))
                    for v in versions
                    if v.router == rc.name
                ],
            )
        )
    return RoutersView(routers=views)


def _version_view(version: VersionInfo, shadowed: tuple[int, float] | None, requests: int) -> VersionView:
    shadow = ShadowStats(decisions=shadowed[0], agreement=shadowed[1]) if shadowed else ShadowStats()
    trial = version.status == "candidate" and version.traffic_share
    return VersionView(
        id=version.id,
        version=version.version,
        status=version.status,
        created_at=version.created_at,
        parent=version.parent_id,
        metrics=version.metrics,
        shadow=shadow,
        ab=ABStats(share=version.traffic_share or 0.0, requests=requests) if trial else None,
    )


@ui_api_routes.post("/routers/versions/{version_id}/promote")
async def promote(
    version_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, _: Operator
) -> VersionChanged:
    """As `moe router promote`: every replica serves (or shadows) the version within MOE_ROUTER_POLL_S."""
    bodies: BodyReader = request.app.state.bodies
    body = await bodies.read(await request.body(), PromoteRequest)
    try:
        info = await _read(RouterVersions(_services(request).decision_log.engine).set_status, version_id, body.to)
    except VersionError:  # the status is valid, so the version is missing
        raise APIError(404, f"No router version {version_id}.", param="version_id", code="version_not_found") from None
    return VersionChanged(router=info.router, version=info.version, status=info.status)


@ui_api_routes.post("/routers/{name}/revert")
async def revert(name: str, request: Request, _: Operator) -> VersionChanged:
    """As `moe router revert`: the active version retires and the one active before it serves again."""
    services = _services(request)
    if name not in services.routers:
        raise APIError(404, f"No router `{name}` in the config.", param="name", code="router_not_found")
    try:
        info = await _read(RouterVersions(services.decision_log.engine).revert, name)
    except VersionError as exc:  # nothing active, or nothing to go back to
        raise APIError(400, f"{exc}.", param="name", code="cannot_revert") from None
    return VersionChanged(router=info.router, version=info.version, status=info.status)


@ui_api_routes.get("/evaluation")
async def evaluation(request: Request, _: Operator, router: Name = None) -> EvaluationView:
    """The served version's cost-quality curve, as its manifest keeps it (`params.cost_quality`: the evaluation's
    points, training/evaluate.py's {lambda, cost, accuracy}; [] when it keeps none), and its live operating point
    over the last STATS_WINDOW: cost per 1k requests and mean feedback score."""
    services = _services(request)
    name = router or next((rc.name for rc in services.config.routers), "")
    if name not in services.routers:
        raise APIError(404, f"No router `{name}` in the config.", param="router", code="router_not_found")
    served = services.routers[name]
    live = await _read(
        WindowStats(services.decision_log.engine).live, served.name, served.version, datetime.now(UTC) - STATS_WINDOW
    )
    params = served.manifest.params if served.manifest else {}
    return EvaluationView(
        router=name,
        version=served.version,
        points=_curve(params.get("cost_quality")),
        live=LivePoint(
            requests=live.requests,
            quality=live.quality,
            cost_per_1k=1000 * live.cost_usd / live.requests if live.requests else None,
        ),
    )


def _curve(points: Any) -> list[CurvePoint]:
    """training/evaluate.py's settings ({lambda, cost in USD per 1k queries, accuracy}) as the plot's points."""
    if not isinstance(points, list):
        return []
    numbers = ("lambda", "cost", "accuracy")
    return [
        CurvePoint(label=f"lambda {p['lambda']:g}", cost_per_1k=p["cost"], quality=p["accuracy"])
        for p in points
        if isinstance(p, dict) and all(isinstance(p.get(n), int | float) for n in numbers)
    ]


@ui_api_routes.get("/feedback")
async def feedback(
    request: Request,
    key: Key,
    bucket_minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 60,
    window_hours: Annotated[int, Query(ge=1, le=90 * 24)] = 24,
    tenant: Name = None,
) -> FeedbackBuckets:
    """Feedback per interval over the window, every interval listed (empty ones with count 0)."""
    step_s = bucket_minutes * 60
    now = datetime.now(UTC)
    first, last = int((now - timedelta(hours=window_hours)).timestamp()) // step_s, int(now.timestamp()) // step_s
    if last - first + 1 > MAX_BUCKETS:
        raise APIError(
            400,
            f"Invalid request: at most {MAX_BUCKETS} intervals; widen `bucket_minutes`.",
            param="bucket_minutes",
            code="too_many_buckets",
        )
    where = DecisionFilter(scope=_scope(key), tenant=tenant or None)
    counts = {
        c.bucket: c
        for c in await _read(
            DecisionQueries(_services(request).decision_log.engine).feedback_counts,
            where,
            datetime.fromtimestamp(first * step_s, UTC),
            step_s,
        )
    }
    return FeedbackBuckets(
        buckets=[
            FeedbackBucket(
                start=datetime.fromtimestamp(b * step_s, UTC),
                count=c.count if c else 0,
                mean_score=c.mean_score if c else None,
                thumbs_up=c.thumbs_up if c else 0,
                thumbs_down=c.thumbs_down if c else 0,
            )
            for b in range(first, last + 1)
            for c in [counts.get(b)]
        ]
    )
