"""State shared by gateway replicas in Redis: the response cache, rate-limit counters and the experts'
circuit breakers (their rule: experts/breaker.py).

Redis is optional. Without REDIS_URL, or while Redis is unreachable, the cache is off and breakers
live in this process; a background ping notices when Redis is back. Every Redis call has a short
timeout, and none is attempted while Redis is known to be down, so an outage never slows requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from experts.breaker import Breakers, BreakerSettings

if TYPE_CHECKING:  # redis (which imports OpenTelemetry's metrics and cryptography) loads only when REDIS_URL is set
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

PING_INTERVAL_S = 2.0


class SharedState:
    def __init__(self, url: str | None, *, cache_ttl_s: int = 3600, breaker: BreakerSettings | None = None,
                 prefix: str = "moe") -> None:
        self.url = url
        self.cache_ttl_s = cache_ttl_s
        self.prefix = prefix
        self.redis_ok = False
        self.breakers = Breakers(self, breaker, prefix)
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        # (any Redis error, the ones that mean Redis is down): set by `start`, where redis is imported.
        self._errors: tuple[type[Exception], tuple[type[Exception], ...]] = (OSError, (OSError,))

    @property
    def configured(self) -> bool:
        return self.url is not None

    async def start(self) -> None:
        if self.url is None:
            return
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._errors = (RedisError, (RedisConnectionError, RedisTimeoutError, OSError))
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
        except (self._errors[0], OSError):
            ok = False
        if ok != self.redis_ok:
            log.warning("redis %s", "reachable: cache on, breakers shared" if ok else "unreachable: cache off, breakers local")
        self.redis_ok = ok

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """A Redis command, or None when Redis is (or just went) down."""
        if not self.redis_ok or self._client is None:
            return None
        try:
            return await getattr(self._client, command)(*args, **kwargs)
        except self._errors[1] as exc:
            log.warning("redis %s failed (%s): cache off, breakers local until it answers", command, type(exc).__name__)
            self.redis_ok = False
        except self._errors[0]:
            log.exception("redis %s failed", command)
        return None

    async def run_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script, atomic on the server (gateway/keys/rate_limit.py's counters); None when Redis is down."""
        return await self.call("eval", script, len(keys), *keys, *args)

    # -- response cache -------------------------------------------------------------------------
    def _cache_key(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        raw = await self.call("get", self._cache_key(key))
        return json.loads(raw) if raw else None

    async def cache_put(self, key: str, payload: dict[str, Any]) -> None:
        await self.call("set", self._cache_key(key), json.dumps(payload), ex=self.cache_ttl_s)
