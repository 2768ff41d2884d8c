"""Hot reload of router versions: every replica reads the active and shadow versions of each configured router
from the database (migrations/router_versions.py) every MOE_ROUTER_POLL_S, and serves a newly active one without a
restart (a shadow one decides beside it, never served: gateway/chat/serving.py). The new router is loaded off the event loop and swapped in whole; requests already routed keep the
router they started with, so a switch fails none. A router with no version in the database serves the config's
artifact, as before any version was registered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping, Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from migrations.router_versions import RouterVersions, VersionInfo
from routers import ExpertProfile, Router, load_router

log = logging.getLogger(__name__)


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
        self.serving: dict[tuple[str, str], int] = {}  # (router name, status) -> the version id loaded, once one is
        self._failing: dict[str, str] = {}  # router name -> why its last check failed: said once, not every poll
        self._task: asyncio.Task[None] | None = None

    def loaded(self) -> dict[str, dict[str, int | None]]:
        """Per router, the active and shadow version ids this replica serves (None: the config's artifact, no shadow)."""
        return {name: {status: self.serving.get((name, status)) for status in ("active", "shadow")}
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
        """Serve each router's active version and decide beside it with its shadow version, if not loaded already."""
        for name in list(self.routers):
            for status, slot in (("active", self.routers), ("shadow", self.shadows)):
                try:
                    version = await asyncio.to_thread(self.versions.latest, name, status)
                    if version is None:
                        if status == "shadow" and self.serving.pop((name, status), None) is not None:
                            slot.pop(name, None)  # its shadow was promoted or retired
                    elif self.serving.get((name, status)) != version.id:
                        slot[name] = await asyncio.to_thread(self._load, version)
                        self.serving[(name, status)] = version.id
                        log.info("router %s: %s version %d (%s@%s) loaded", name, status, version.id,
                                 version.family, version.version)
                    self._failing.pop(name, None)
                except (SQLAlchemyError, OSError, ValueError) as exc:  # the database down, a bad artifact: go on
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    if self._failing.get(name) != why:
                        log.warning("router %s: %s version not read or loaded (%s)", name, status, why)
                    self._failing[name] = why

    def _load(self, version: VersionInfo) -> Router:
        directory = self.versions.artifact(version.id, self.directory / version.router / str(version.id))
        return load_router(directory, self.profiles)
