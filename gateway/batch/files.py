"""Batch API files: their rows in the `files` table, their bytes in the file store (MOE_FILES_DIR), one file per id.
A file belongs to its uploader's tenant; another tenant finds nothing. Blocking: the gateway calls it from worker
threads."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import ColumnElement, Engine, and_, delete, or_, select
from sqlalchemy.orm import Session

from gateway.errors import APIError
from gateway.keys.store import ApiKey
from migrations.schema import BatchRow, FileRow

MAX_LINES = 50_000  # requests in one batch file, as OpenAI allows
MAX_FILENAME = 255
Tenant = str | None  # whose files and batches: the caller's key's tenant; None while keys are not required

_Row = TypeVar("_Row", FileRow, BatchRow)


def tenant_of(key: ApiKey | None) -> Tenant:
    return key.tenant if key else None


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def owned(row: type[FileRow | BatchRow], tenant: Tenant) -> ColumnElement[bool]:
    """The rows `tenant` may see: its own; with keys not required, those made without a key."""
    return row.tenant.is_(None) if tenant is None else row.tenant == tenant


def page(
    session: Session,
    row: type[_Row],
    where: Sequence[ColumnElement[bool]],
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> tuple[list[_Row], bool]:
    """One page of a listing in creation order and whether more follow; `after`: the last id of the page before."""
    order = (row.created_at.desc(), row.id.desc()) if newest_first else (row.created_at.asc(), row.id.asc())
    conditions = list(where)
    if after is not None:
        cursor = session.scalars(select(row).where(row.id == after, *where)).first()
        if cursor is None:  # unknown, or another tenant's: nothing follows it
            return [], False
        beyond = (row.created_at < cursor.created_at) if newest_first else (row.created_at > cursor.created_at)
        tie = (row.id < cursor.id) if newest_first else (row.id > cursor.id)
        conditions.append(or_(beyond, and_(row.created_at == cursor.created_at, tie)))
    found = list(session.scalars(select(row).where(*conditions).order_by(*order).limit(limit + 1)))
    return found[:limit], len(found) > limit


class FileStore:
    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = root

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def upload(self, source: IO[bytes], filename: str, key: ApiKey | None, max_bytes: int) -> FileRow:
        """Store an uploaded batch input: JSONL, one JSON object per non-blank line (the lines' own faults, such
        as a body the gateway would refuse, are each request's error in the batch's error file)."""
        row = FileRow(
            id=new_id("file-"),
            purpose="batch",
            filename=_clean(filename) or "batch.jsonl",
            created_at=datetime.now(UTC),
            api_key_id=key.id if key else None,
            tenant=tenant_of(key),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{row.id}.partial"
        try:
            with partial.open("wb") as out:
                row.bytes = _copy_jsonl(source, out, max_bytes)
            partial.replace(self.path(row.id))
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                session.add(row)
        except BaseException:
            partial.unlink(missing_ok=True)
            self.path(row.id).unlink(missing_ok=True)
            raise
        return row

    def output(self, file_id: str, filename: str, lines: list[dict[str, Any]], owner: BatchRow) -> FileRow:
        """Write a batch's output or error file (its row is added by whoever finishes the batch, in one commit)."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        partial = self.root / f".{file_id}.partial"
        partial.write_bytes(data)
        partial.replace(self.path(file_id))
        return FileRow(
            id=file_id,
            purpose="batch_output",
            filename=filename,
            bytes=len(data),
            created_at=datetime.now(UTC),
            api_key_id=owner.api_key_id,
            tenant=owner.tenant,
        )

    def get(self, file_id: str, tenant: Tenant) -> FileRow | None:
        with Session(self.engine) as session:
            return session.scalars(select(FileRow).where(FileRow.id == file_id, owned(FileRow, tenant))).first()

    def list(
        self, tenant: Tenant, *, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[FileRow], bool]:
        where = [owned(FileRow, tenant)] + ([FileRow.purpose == purpose] if purpose else [])
        with Session(self.engine) as session:
            return page(session, FileRow, where, after=after, limit=limit, newest_first=newest_first)

    def delete(self, file_id: str, tenant: Tenant) -> bool:
        with Session(self.engine) as session, session.begin():
            gone = session.execute(delete(FileRow).where(FileRow.id == file_id, owned(FileRow, tenant))).rowcount
        if gone:
            self.path(file_id).unlink(missing_ok=True)
        return bool(gone)

    def read(self, file_id: str) -> bytes | None:
        """A file's bytes, whoever owns it (a batch reads its input); None once it is deleted."""
        try:
            return self.path(file_id).read_bytes()
        except FileNotFoundError:
            return None


def _copy_jsonl(source: IO[bytes], out: IO[bytes], max_bytes: int) -> int:
    """Copy line by line, checking each; the number of bytes copied."""
    size = requests = 0
    for number, raw in enumerate(source, start=1):
        size += len(raw)
        if size > max_bytes:
            raise APIError(
                413, f"The file exceeds the limit of {max_bytes} bytes.", param="file", code="file_too_large"
            )
        out.write(raw)
        if not raw.strip():
            continue
        requests += 1
        if requests > MAX_LINES:
            raise APIError(
                400, f"A batch file holds at most {MAX_LINES} requests.", param="file", code="too_many_requests"
            )
        try:
            line = json.loads(raw)
        except ValueError:
            raise APIError(
                400, f"The file is not JSONL: line {number} is not valid JSON.", param="file", code="invalid_jsonl"
            ) from None
        if not isinstance(line, dict):
            raise APIError(
                400,
                f"The file is not JSONL of requests: line {number} is not a JSON object.",
                param="file",
                code="invalid_jsonl",
            )
    if requests == 0:
        raise APIError(400, "The file holds no requests.", param="file", code="empty_file")
    return size


def _clean(filename: str) -> str:
    """A filename as stored: printable characters only (no NUL, which PostgreSQL's text refuses), within its column."""
    return "".join(c for c in os.path.basename(filename) if c.isprintable())[:MAX_FILENAME]
