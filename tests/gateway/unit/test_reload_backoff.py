"""A router version that fails to load is tried again after a growing wait, not on every poll; a newly promoted
version is loaded at once, and the wait of a version no longer named is forgotten."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import reload
from gateway.reload import MAX_RETRY_S, RouterReloader
from migrations.router_versions import VersionInfo


def version(version_id: int) -> VersionInfo:
    now = datetime.now(UTC)
    return VersionInfo(version_id, "r", "ensemble", f"v{version_id}", "active", None, None, {}, "0" * 64, now, now)


class Versions:
    """What the reloader reads from the database: the active version, whichever the test promotes."""

    def __init__(self) -> None:
        self.active = version(1)

    def serving(self, name: str) -> dict[str, VersionInfo]:
        return {"active": self.active}


def test_a_failing_version_is_retried_after_a_doubling_wait_and_a_new_one_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    monkeypatch.setattr(reload.time, "monotonic", lambda: clock[0])
    versions = Versions()
    served: dict[str, Any] = {"r": "the config's router"}
    reloader = RouterReloader(served, versions, [], tmp_path, interval_s=1.0)  # type: ignore[arg-type]
    tried: list[tuple[int, float]] = []

    def load(info: VersionInfo) -> Any:
        tried.append((info.id, clock[0]))
        if info.id == 1:
            raise OSError("a damaged artifact")
        return f"router {info.id}"

    reloader._load = load  # type: ignore[method-assign]
    for clock[0] in (0.0, 0.5, 0.99, 1.0, 2.0, 2.99, 3.0, 6.9, 7.0):  # polls; tries due at 0, 1, 3 and 7
        asyncio.run(reloader.check())
    assert tried == [(1, 0.0), (1, 1.0), (1, 3.0), (1, 7.0)]
    assert served["r"] == "the config's router"  # what loaded last serves on

    versions.active = version(2)  # a new promotion does not wait for the broken one's turn
    clock[0] = 7.5
    asyncio.run(reloader.check())
    assert tried[-1] == (2, 7.5) and served["r"] == "router 2"

    versions.active = version(1)  # reverted to: its wait was forgotten once no longer named, so it is tried at once
    clock[0] = 7.6
    asyncio.run(reloader.check())
    assert tried[-1] == (1, 7.6)


def test_the_wait_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(reload.time, "monotonic", lambda: clock[0])
    reloader = RouterReloader({"r": None}, Versions(), [], tmp_path, interval_s=100.0)  # type: ignore[arg-type]
    tried: list[float] = []

    def load(info: VersionInfo) -> Any:
        tried.append(clock[0])
        raise OSError("still damaged")

    reloader._load = load  # type: ignore[method-assign]
    for clock[0] in (0.0, 100.0, 300.0, 600.0, 900.0):
        asyncio.run(reloader.check())
    assert tried == [0.0, 100.0, 300.0, 600.0, 900.0]  # waits of 100, 200, then MAX_RETRY_S each time
    assert MAX_RETRY_S == 300.0
