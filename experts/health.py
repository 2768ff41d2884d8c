"""Background probes of each expert's server (GET {api_base}/models), read by /readyz and /v1/models.

An expert called through litellm is a provider's service with its own API, not an OpenAI-compatible
server to probe: it counts as healthy, and its failures reach the breakers instead."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from experts.openai_client import tls_for
from experts.registry import ExpertConfig

log = logging.getLogger(__name__)


@dataclass
class ExpertHealth:
    healthy: bool = False
    checked_at: float = 0.0
    error: str | None = None


class HealthMonitor:
    def __init__(self, experts: Sequence[ExpertConfig], interval_s: float) -> None:
        self.experts = list(experts)
        self.interval_s = interval_s
        self.status: dict[str, ExpertHealth] = {e.name: ExpertHealth() for e in self.experts}
        self._task: asyncio.Task[None] | None = None
        # Experts sharing a server share one probe.
        self._bases = sorted({base for e in self.experts if (base := _probed(e))})
        self._client: aiohttp.ClientSession | None = None  # one for the monitor's life, built on first use

    async def check_all(self) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_for(*self._bases)),
                                                 timeout=aiohttp.ClientTimeout(total=2.0))
        bases = self._bases
        results = await asyncio.gather(*(self._probe(self._client, base) for base in bases))
        by_base = dict(zip(bases, results, strict=True))
        now = time.time()
        for expert in self.experts:
            base = _probed(expert)
            error = by_base[base] if base else None
            was = self.status[expert.name].healthy
            self.status[expert.name] = ExpertHealth(error is None, now, error)
            if was != (error is None):
                log.info("expert %s is now %s", expert.name, "healthy" if error is None else f"down: {error}")

    @staticmethod
    async def _probe(client: aiohttp.ClientSession, base: str) -> str | None:
        try:
            async with client.get(f"{base}/models") as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def any_healthy(self) -> bool:
        return any(h.healthy for h in self.status.values())

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="expert-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - a probe bug must not kill the loop
                log.exception("expert health check failed")


def _probed(expert: ExpertConfig) -> str | None:
    """The server whose /models tells whether `expert` is up, if it is one of ours to probe."""
    return expert.api_base.rstrip("/") if expert.provider == "openai" and expert.api_base else None
