"""Hot reload of router versions: every replica reads the active and shadow versions of each configured router
from the database (migrations/router_versions.py) every MOE_ROUTER_POLL_S, and serves a newly active one without a
restart (a shadow one decides beside it, never served: gateway/chat/serving.py). The new router is loaded off the event loop and swapped in whole; requests already routed keep the
router they started with, so a switch fails none. A router with no version in the database serves the config's
artifact, as before any version was registered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from migrations.router_versions import RouterVersions, VersionInfo
from routers import ExpertProfile, Router, load_router

log = logging.getLogger(__name__)
# A version that failed to load is tried again after the poll interval doubled per failure, up to this: a damaged
# artifact does not mend itself, and each try fetches and unpacks it whole; a new promotion is loaded at once.
MAX_RETRY_S = 300.0


@dataclass(frozen=True)
class Trial:
    """A candidate version serving `share` of a router's API keys or users beside the active one (A/B)."""

    router: Router
    share: float
    version_id: int
    version: str

    def serves(self, sticky: str) -> bool:
        """Whether this API key or user is in the candidate's share: the same answer every time (sticky)."""
        digest = hashlib.sha256(f"{self.version}/{sticky}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.share


class RouterReloader:
    def __init__(
        self,
        routers: MutableMapping[str, Router],
        versions: RouterVersions,
        profiles: Sequence[ExpertProfile],
        directory: Path,
        interval_s: float,
    ) -> None:
        self.routers = routers  # the dict requests are routed with: swapped entry by entry
        self.versions = versions
        self.profiles = list(profiles)
        self.directory = directory
        self.interval_s = interval_s
        self.shadows: dict[str, Router] = {}  # router name -> its shadow version's router, while it has one
        self.trials: dict[str, Trial] = {}  # router name -> the candidate serving a share of its traffic (A/B)
        self.serving: dict[tuple[str, str], int] = {}  # (router name, status) -> the version id loaded, once one is
        self._failing: dict[str, str] = {}  # router name -> why its last check failed: said once, not every poll
        # (router name, status) -> the version that failed to load there, its failures and its next try: a slot
        # holds one, so a version no longer named there (replaced, retired, reverted to later) starts afresh.
        self._retry: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def loaded(self) -> dict[str, dict[str, int | None]]:
        """Per router, the active, shadow and A/B version ids this replica serves (None: the config's artifact; none)."""
        return {name: {kind: self.serving.get((name, kind)) for kind in ("active", "shadow", "ab")}
                for name in self.routers}

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="router-reload")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        """Serve each router's active version, decide beside it with its shadow version and give its A/B candidate
        its share, loading what is not loaded already (one query per router and poll)."""
        for name in list(self.routers):
            try:
                serving = await asyncio.to_thread(self.versions.serving, name)
                for kind in ("active", "shadow", "ab"):
                    await self._check(name, kind, serving.get(kind))
                self._failing.pop(name, None)
            # The database down, or an artifact that does not load (as many ways as its files can be damaged): say
            # why and go on serving what is loaded; anything escaping here would end the reload loop for good.
            except Exception as exc:
                why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                if self._failing.get(name) != why:
                    log.warning("router %s: versions not read or loaded (%s)", name, why)
                self._failing[name] = why

    async def _check(self, name: str, kind: str, version: VersionInfo | None) -> None:
        if version is None:
            self._retry.pop((name, kind), None)
            if kind != "active" and self.serving.pop((name, kind), None) is not None:
                (self.shadows if kind == "shadow" else self.trials).pop(name, None)  # promoted, retired or ended
            return
        share = version.traffic_share or 0.0
        if self.serving.get((name, kind)) != version.id:
            failed, failures, next_try = self._retry.get((name, kind), (version.id, 0, 0.0))
            if failed != version.id:  # another version failed here before: this one starts afresh
                failures, next_try = 0, 0.0
            if time.monotonic() < next_try:
                return
            try:
                router = await asyncio.to_thread(self._load, version)
            except Exception:
                delay = min(self.interval_s * 2**failures, MAX_RETRY_S)
                self._retry[(name, kind)] = (version.id, failures + 1, time.monotonic() + delay)
                raise
            self._retry.pop((name, kind), None)
            if kind == "active":
                self.routers[name] = router
            elif kind == "shadow":
                self.shadows[name] = router
            else:
                self.trials[name] = Trial(router, share, version.id, version.version)
            self.serving[(name, kind)] = version.id
            log.info("router %s: %s version %d (%s@%s) loaded", name, kind, version.id, version.family, version.version)
        elif kind == "ab" and self.trials[name].share != share:  # the same candidate, its share changed
            self.trials[name] = replace(self.trials[name], share=share)

    def _load(self, version: VersionInfo) -> Router:
        directory = self.versions.artifact(version.id, self.directory / version.router / str(version.id))
        return load_router(directory, self.profiles)
