"""Router versions kept in the database: registered from a trained artifact directory, promoted and reverted,
and fetched back as a directory by any replica. Blocking (SQLAlchemy sessions): callers on an event loop use a
worker thread.

Statuses: `candidate` (registered; with a traffic share, it serves that share of API keys or users beside the
active one, A/B), `shadow` (decides beside the active one, never served), `active` (served; at most one per
router), `retired` (was active). Promoting retires the active version; reverting retires the
active version and makes the one active before it active again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from migrations.schema import RouterVersionRow

STATUSES = ("candidate", "shadow", "active", "retired")


class VersionError(ValueError):
    """What cannot be done with the versions as they are; the message says why."""


@dataclass(frozen=True)
class VersionInfo:
    id: int
    router: str
    family: str
    version: str
    status: str
    parent_id: int | None
    traffic_share: float | None
    metrics: dict[str, Any]
    artifact_sha256: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: RouterVersionRow) -> VersionInfo:
        return cls(row.id, row.router, row.family, row.version, row.status, row.parent_id, row.traffic_share,
                   dict(row.metrics or {}),
                   row.artifact_sha256, row.created_at, row.updated_at)


def pack(directory: Path) -> bytes:
    """The artifact directory as a gzipped tar, its members in a fixed order (the same files pack the same)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buffer.getvalue()


def unpack(blob: bytes, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")  # no absolute paths, links out, or devices


class RouterVersions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, router: str, directory: Path, *, status: str = "candidate", parent_id: int | None = None,
                 metrics: dict[str, Any] | None = None) -> VersionInfo:
        """Store a trained artifact as a version of `router`; registering the same version again changes nothing."""
        from routers.manifest import Manifest

        if status not in STATUSES:
            raise VersionError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        manifest = Manifest.read(directory)
        blob = pack(directory)
        digest = hashlib.sha256(blob).hexdigest()
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            existing = session.scalars(select(RouterVersionRow).where(
                RouterVersionRow.router == router, RouterVersionRow.version == manifest.version)).first()
            if existing is not None:
                if existing.artifact_sha256 != digest:
                    raise VersionError(f"{router} version {manifest.version} is registered with other files")
                return VersionInfo.of(existing)
            if status == "active":
                self._retire_active(session, router, now)
            row = RouterVersionRow(router=router, family=manifest.family, version=manifest.version, status=status,
                                   parent_id=parent_id, metrics={**manifest.metrics, **(metrics or {})},
                                   artifact=blob, artifact_sha256=digest, created_at=now, updated_at=now)
            session.add(row)
        return VersionInfo.of(row)

    def list(self, router: str | None = None) -> list[VersionInfo]:
        with Session(self.engine) as session:
            query = select(RouterVersionRow).order_by(RouterVersionRow.id)
            if router is not None:
                query = query.where(RouterVersionRow.router == router)
            return [VersionInfo.of(row) for row in session.scalars(query)]

    def artifact(self, version_id: int, directory: Path) -> Path:
        """The version's files, unpacked into `directory` (once: a directory already there is the same files)."""
        if (directory / "router.json").is_file():
            return directory
        with Session(self.engine) as session:
            blob = session.execute(select(RouterVersionRow.artifact).where(RouterVersionRow.id == version_id)).scalar_one()
        # Whole or absent: a crash mid-unpack leaves no half version; each call (a replica's workers share the
        # directory, and a process may hold several replicas) unpacks into its own staging folder, and the first to
        # finish wins.
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{directory.name}.partial-", dir=directory.parent))
        try:
            unpack(blob, partial)
            partial.rename(directory)
        except OSError:
            if not (directory / "router.json").is_file():  # else another call won: the same files
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone once renamed; else what a failed unpack left
        return directory

    def set_status(self, version_id: int, status: str) -> VersionInfo:
        """Make a version candidate, shadow, active (retiring the active one) or retired."""
        if status not in STATUSES:
            raise VersionError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(RouterVersionRow, version_id, with_for_update=True)
            if row is None:
                raise VersionError(f"no router version {version_id}")
            if status == "active" and row.status != "active":
                self._retire_active(session, row.router, now)
            row.status, row.updated_at = status, now
            if status != "candidate":
                row.traffic_share = None  # promoted, shadowed or retired: its A/B test is over
        return VersionInfo.of(row)

    def serving(self, router: str) -> dict[str, VersionInfo]:
        """In one query, what replicas serve for the router: its `active` version, its newest `shadow`, and its
        newest candidate with a share of traffic (`ab`); a kind with none is absent."""
        with Session(self.engine) as session:
            rows = session.scalars(select(RouterVersionRow).where(
                RouterVersionRow.router == router,
                (RouterVersionRow.status.in_(("active", "shadow")))
                | ((RouterVersionRow.status == "candidate") & (RouterVersionRow.traffic_share > 0)))
                .order_by(RouterVersionRow.updated_at, RouterVersionRow.id))
            # Oldest first, so the newest of each kind is the one kept.
            return {("ab" if row.status == "candidate" else row.status): VersionInfo.of(row) for row in rows}

    def set_share(self, version_id: int, share: float) -> VersionInfo:
        """A candidate's share of traffic in an A/B test (0 ends it)."""
        if not 0 <= share < 1:
            raise VersionError("a share of traffic is at least 0 and below 1")
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(RouterVersionRow, version_id, with_for_update=True)
            if row is None:
                raise VersionError(f"no router version {version_id}")
            if row.status != "candidate":
                raise VersionError(f"version {version_id} is {row.status}; only a candidate takes a share of traffic")
            row.traffic_share, row.updated_at = share or None, datetime.now(UTC)
        return VersionInfo.of(row)

    def revert(self, router: str) -> VersionInfo:
        """Retire the active version and make active again the one most recently retired before it."""
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            active = session.scalars(select(RouterVersionRow).where(
                RouterVersionRow.router == router, RouterVersionRow.status == "active").with_for_update()).first()
            if active is None:
                raise VersionError(f"{router} has no active version to revert")
            previous = session.scalars(select(RouterVersionRow).where(
                RouterVersionRow.router == router, RouterVersionRow.status == "retired")
                .order_by(RouterVersionRow.updated_at.desc(), RouterVersionRow.id.desc())).first()
            if previous is None:
                raise VersionError(f"{router} has no earlier version to revert to")
            active.status, active.updated_at = "retired", now
            previous.status, previous.updated_at = "active", now
        return VersionInfo.of(previous)

    @staticmethod
    def _retire_active(session: Session, router: str, now: datetime) -> None:
        for row in session.scalars(select(RouterVersionRow).where(
                RouterVersionRow.router == router, RouterVersionRow.status == "active").with_for_update()):
            row.status, row.updated_at = "retired", now
