"""The gateway's long-lived parts, built once: the routers, the decision log, expert health, the state shared in
Redis, API keys, the expert pool and the chat service over them, and the feedback and stored responses kept in the
decision log's database. The app (gateway/app.py) and `moe batch` (gateway/batch/runner.py) both build them here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from experts.breaker import BreakerSettings
from experts.health import HealthMonitor
from experts.pool import ExpertPool
from gateway.chat.serving import ChatService
from gateway.config import GatewayConfig
from gateway.decisions.log import DecisionLog, make_engine
from gateway.feedback.store import FeedbackStore
from gateway.keys.guard import KeyGuard
from gateway.keys.rate_limit import RateLimiter
from gateway.keys.store import KeyStore
from gateway.observability.metrics import GatewayMetrics
from gateway.reload import RouterReloader
from gateway.responses.store import ResponseStore
from gateway.settings import Settings
from gateway.shared_state import SharedState
from migrations.router_versions import RouterVersions
from routers import Router, load_router
from routers.encoder import EncoderCacheMissing
from routers.policy import parse_knob

if TYPE_CHECKING:
    from gateway.observability.tracing import RequestTracer

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The gateway cannot start; the message says what to fix."""


def check_artifacts(config: GatewayConfig) -> None:
    """Every configured router has a trained artifact, else a StartupError saying how to train it."""
    for rc in config.routers:
        if not rc.artifact.is_dir():
            raise StartupError(
                f"router {rc.name!r}: no trained artifact at {rc.artifact}; "
                f"train one with `moe router train --family {rc.family} --out {rc.artifact}`"
            )


def load_routers(config: GatewayConfig) -> dict[str, Router]:
    check_artifacts(config)
    profiles = [e.profile() for e in config.experts]
    routers: dict[str, Router] = {}
    for rc in config.routers:
        try:
            routers[rc.name] = load_router(rc.artifact, profiles)
        except EncoderCacheMissing as exc:  # a serving install without the train extra: say how to build it
            raise StartupError(f"router {rc.name!r}: {exc}") from None
        log.info("router %s loaded (%s@%s)", rc.name, routers[rc.name].name, routers[rc.name].version)
    for vm in config.virtual_models:
        manifest = routers[vm.router].manifest
        if vm.policy:
            try:
                parse_knob(vm.policy, manifest.params.get("calibration") if manifest else None)
            except ValueError as exc:
                raise StartupError(f"virtual model {vm.name!r}: {exc}") from None
    return routers


@dataclass
class Services:
    config: GatewayConfig
    routers: dict[str, Router]
    decision_log: DecisionLog
    health: HealthMonitor
    state: SharedState
    keys: KeyGuard
    pool: ExpertPool
    chat: ChatService
    reloader: RouterReloader
    feedback: FeedbackStore
    responses: ResponseStore

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: GatewayConfig,
        routers: Mapping[str, Router],
        *,
        metrics: GatewayMetrics,
        serving: bool = True,
        tracer: RequestTracer | None = None,
    ) -> Services:
        """`serving`: for the gateway; a batch (False) shares nothing through Redis (no response cache; breakers do
        not matter once every request is routed) and, carrying no API key, charges none."""
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
        state = SharedState(settings.redis_url if serving else None, cache_ttl_s=settings.moe_cache_ttl_s, breaker=breaker)
        keys = KeyGuard(KeyStore(decision_log.engine), RateLimiter(state),
                        required=settings.moe_require_api_key and serving, cache_ttl_s=settings.moe_key_cache_ttl_s)
        pool = ExpertPool(config.experts, state.breakers, health)
        serving_routers = dict(routers)  # one dict: the reloader swaps a router in where requests find it
        reloader = RouterReloader(serving_routers, RouterVersions(decision_log.engine),
                                  [e.profile() for e in config.experts], settings.moe_router_versions_dir,
                                  settings.moe_router_poll_s)
        chat = ChatService(config, serving_routers, pool, decision_log, state, keys=keys, metrics=metrics,
                           shadows=reloader.shadows, shadow_share=settings.moe_shadow_share, trials=reloader.trials,
                           log_prompts=settings.moe_log_prompts, tracer=tracer)
        return cls(config, serving_routers, decision_log, health, state, keys, pool, chat, reloader,
                   FeedbackStore(decision_log.engine), ResponseStore(decision_log.engine))

    async def start(self, *, background: bool = True) -> None:
        """`background`: the health probes, the Redis watch, the key-spend writer and the router reload run too (a
        batch probes the experts and reads the active router versions once instead)."""
        await self.decision_log.start()
        if background:
            await self.health.start()
            await self.state.start()
            await self.keys.start()
            await self.reloader.start()
        else:
            await self.health.check_all()
            await self.reloader.check()

    async def stop(self) -> None:
        await self.reloader.stop()
        self.chat.close()
        await self.pool.aclose()
        await self.health.stop()
        await self.keys.stop()  # before Redis and the database it writes to go away
        await self.state.stop()
        await self.decision_log.stop()
