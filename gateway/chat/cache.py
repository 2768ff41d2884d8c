"""The response cache (in Redis, shared by the replicas): one answer per tenant and request hash."""

from __future__ import annotations

from typing import Any

from gateway.decisions.record import DecisionRecord
from gateway.shared_state import SharedState


class ResponseCache:
    def __init__(self, state: SharedState) -> None:
        self.state = state

    async def lookup(self, record: DecisionRecord) -> dict[str, Any] | None:
        """The cached completion, settling the record as answered (at no cost) when there is one."""
        cached = await self.state.cache_get(cache_key(record))
        # A lookup Redis failed to answer is no miss: the cache was off for this request (no header, no count).
        record.cache_hit = cached is not None if self.state.redis_ok else None
        if cached is not None:
            record.chosen_expert = cached.get("model")
            record.settle("ok", 200)
            record.took(cached.get("usage"))
            record.cost_usd = 0.0  # no expert was called
        return cached

    async def store(self, record: DecisionRecord, completion: dict[str, Any]) -> None:
        await self.state.cache_put(cache_key(record), {k: completion[k] for k in ("model", "choices", "usage")})


def cache_key(record: DecisionRecord) -> str:
    """Tenants never share cached answers. (A request hash is hex, so no tenant name makes two keys collide.)"""
    return f"{record.tenant}/{record.request_hash}" if record.tenant else record.request_hash
