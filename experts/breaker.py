"""Circuit breakers: an expert that keeps failing is ranked last for a while instead of being tried first.

Rule: an expert that fails `threshold` times within `window_s` opens for `cooldown_s` (it is ranked last,
after every healthy expert); when the cooldown expires the next request tries it again (half-open); a
success closes it and clears the count.

Shared by the gateway's replicas through Redis when it answers (any `RedisCommands`); kept in this
process, by the same rule, while it does not.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class BreakerSettings:
    threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0


class RedisCommands(Protocol):
    """A Redis connection that may be down: `call` answers None then (and `redis_ok` says so)."""

    redis_ok: bool

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any: ...


class LocalBreakers:
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


class Breakers:
    """Every expert's breaker, in Redis while `redis` answers, else in this process."""

    def __init__(self, redis: RedisCommands | None, settings: BreakerSettings | None = None, prefix: str = "moe") -> None:
        self.redis = redis
        self.settings = settings or BreakerSettings()
        self.prefix = prefix
        self._local = LocalBreakers(self.settings)
        # Experts whose shared breaker state may be set (a failure recorded here, or a count or open flag seen by
        # the last `open_breakers`): only their successes cost a Redis delete, not every answer's.
        self._to_reset: set[str] = set()

    def _keys(self, expert: str) -> tuple[str, str]:
        return f"{self.prefix}:breaker:{expert}:failures", f"{self.prefix}:breaker:{expert}:open"

    async def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        return None if self.redis is None else await self.redis.call(command, *args, **kwargs)

    async def record_failure(self, expert: str) -> None:
        self._to_reset.add(expert)
        failures, opened = self._keys(expert)
        count = await self._call("incr", failures)
        if count is None:
            self._local.failure(expert)
            return
        if count == 1:
            await self._call("expire", failures, max(1, round(self.settings.window_s)))
        if count >= self.settings.threshold:
            await self._call("set", opened, "1", ex=max(1, round(self.settings.cooldown_s)))
            await self._call("delete", failures)

    async def record_success(self, expert: str) -> None:
        self._local.success(expert)
        if expert in self._to_reset:
            self._to_reset.discard(expert)
            await self._call("delete", *self._keys(expert))

    async def open_breakers(self, experts: list[str]) -> set[str]:
        """Which of `experts` have an open breaker right now (and, on the way, which have any state to reset)."""
        if self.redis is not None and self.redis.redis_ok:
            values = await self._call("mget", [key for e in experts for key in self._keys(e)])
            if values is not None:
                counted, flags = values[0::2], values[1::2]
                for expert, count, flag in zip(experts, counted, flags, strict=True):
                    if count or flag:
                        self._to_reset.add(expert)
                    else:
                        self._to_reset.discard(expert)
                return {e for e, flag in zip(experts, flags, strict=True) if flag}
        return {e for e in experts if self._local.is_open(e)}
