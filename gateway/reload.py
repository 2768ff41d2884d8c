"""Hot reload of router versions: every replica reads the active version of each configured router from the
database (migrations/router_versions.py) every MOE_ROUTER_POLL_S, and serves a newly active one without a
restart. The new router is loaded off the event loop and swapped in whole; requests already routed keep the
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
        self.serving: dict[str, int] = {}  # router name -> the version id served, once one is
        self._failing: dict[str, str] = {}  # router name -> why its last check failed: said once, not every poll
        self._task: asyncio.Task[None] | None = None

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
        """Serve each router's active version, if it is not served already."""
        for name in list(self.routers):
            try:
                active = await asyncio.to_thread(self.versions.active, name)
                if active is not None and self.serving.get(name) != active.id:
                    self.routers[name] = await asyncio.to_thread(self._load, active)
                    self.serving[name] = active.id
                    log.info("router %s now serves version %d (%s@%s)", name, active.id, active.family, active.version)
                self._failing.pop(name, None)
            except (SQLAlchemyError, OSError, ValueError) as exc:  # the database down, a bad artifact: keep serving
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if self._failing.get(name) != why:
                    log.warning("router %s: active version not read or loaded (%s)", name, why)
                self._failing[name] = why

    def _load(self, version: VersionInfo) -> Router:
        directory = self.versions.artifact(version.id, self.directory / version.router / str(version.id))
        return load_router(directory, self.profiles)
