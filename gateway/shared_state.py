"""State shared by gateway replicas in Redis: the response cache and the experts' circuit breakers.

Redis is optional. Without REDIS_URL, or while Redis is unreachable, the cache is off and breakers
live in this process; a background ping notices when Redis is back. Every Redis call has a short
timeout, and none is attempted while Redis is known to be down, so an outage never slows requests.

Breaker: an expert that fails `threshold` times within `window_s` opens for `cooldown_s` (it is
ranked last, after every healthy expert); when the cooldown expires the next request tries it
again (half-open); a success closes it and clears the count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

PING_INTERVAL_S = 2.0


@dataclass(frozen=True)
class BreakerSettings:
    threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0


class _LocalBreakers:
    """The per-process fallback: the same rule, kept in memory."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._failures: dict[str, list[float]] = defaultdict(list)
        self._open_until: dict[str, float] = {}

    def failure(self, expert: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures[expert] if now - t < self.settings.window_s] + [now]
        self._failures[expert] = recent
        if len(recent) >= self.settings.threshold:
            self._open_until[expert] = now + self.settings.cooldown_s
            self._failures[expert] = []
            return True
        return False

    def success(self, expert: str) -> None:
        self._failures.pop(expert, None)
        self._open_until.pop(expert, None)

    def is_open(self, expert: str) -> bool:
        return self._open_until.get(expert, 0.0) > time.monotonic()


class SharedState:
    def __init__(self, url: str | None, *, cache_ttl_s: int = 3600, breaker: BreakerSettings | None = None,
                 prefix: str = "moe") -> None:
        self.url = url
        self.cache_ttl_s = cache_ttl_s
        self.breaker = breaker or BreakerSettings()
        self.prefix = prefix
        self.redis_ok = False
        self._local = _LocalBreakers(self.breaker)
        # Experts whose shared breaker state may be set (a failure recorded here, or a count or open flag seen by
        # the last `open_breakers`): only their successes cost a Redis delete, not every answer's.
        self._to_reset: set[str] = set()
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        return self.url is not None

    async def start(self) -> None:
        if self.url is None:
            return
        # One retry on a fresh connection: after Redis restarts, each pooled connection fails once ("closed by
        # server"), which must not read as Redis being down. A Redis really down refuses the retry too.
        self._client = aioredis.from_url(
            self.url, socket_timeout=0.25, socket_connect_timeout=0.25,
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
        )
        await self._ping()
        self._task = asyncio.create_task(self._watch(), name="redis-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client:
            await self._client.aclose()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            await self._ping()

    async def _ping(self) -> None:
        assert self._client is not None
        try:
            await self._client.ping()
            ok = True
        except (RedisError, OSError):
            ok = False
        if ok != self.redis_ok:
            log.warning("redis %s", "reachable: cache on, breakers shared" if ok else "unreachable: cache off, breakers local")
        self.redis_ok = ok

    async def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """A Redis command, or None when Redis is (or just went) down."""
        if not self.redis_ok or self._client is None:
            return None
        try:
            return await getattr(self._client, command)(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis %s failed (%s): cache off, breakers local until it answers", command, type(exc).__name__)
            self.redis_ok = False
        except RedisError:
            log.exception("redis %s failed", command)
        return None

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script, atomic on the server (gateway.rate_limit's counters); None when Redis is down."""
        return await self._call("eval", script, len(keys), *keys, *args)

    # -- response cache -------------------------------------------------------------------------
    def _cache_key(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        raw = await self._call("get", self._cache_key(key))
        return json.loads(raw) if raw else None

    async def cache_put(self, key: str, payload: dict[str, Any]) -> None:
        await self._call("set", self._cache_key(key), json.dumps(payload), ex=self.cache_ttl_s)

    # -- circuit breakers -----------------------------------------------------------------------
    def _breaker_keys(self, expert: str) -> tuple[str, str]:
        return f"{self.prefix}:breaker:{expert}:failures", f"{self.prefix}:breaker:{expert}:open"

    async def record_failure(self, expert: str) -> None:
        self._to_reset.add(expert)
        failures, opened = self._breaker_keys(expert)
        count = await self._call("incr", failures)
        if count is None:
            self._local.failure(expert)
            return
        if count == 1:
            await self._call("expire", failures, max(1, round(self.breaker.window_s)))
        if count >= self.breaker.threshold:
            await self._call("set", opened, "1", ex=max(1, round(self.breaker.cooldown_s)))
            await self._call("delete", failures)

    async def record_success(self, expert: str) -> None:
        self._local.success(expert)
        if expert in self._to_reset:
            self._to_reset.discard(expert)
            await self._call("delete", *self._breaker_keys(expert))

    async def open_breakers(self, experts: list[str]) -> set[str]:
        """Which of `experts` have an open breaker right now (and, on the way, which have any state to reset)."""
        if self.redis_ok:
            values = await self._call("mget", [key for e in experts for key in self._breaker_keys(e)])
            if values is not None:
                counted, flags = values[0::2], values[1::2]
                for expert, count, flag in zip(experts, counted, flags, strict=True):
                    if count or flag:
                        self._to_reset.add(expert)
                    else:
                        self._to_reset.discard(expert)
                return {e for e, flag in zip(experts, flags, strict=True) if flag}
        return {e for e in experts if self._local.is_open(e)}
