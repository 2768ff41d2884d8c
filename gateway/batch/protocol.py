"""The Batch API's wire schema (`/v1/files`, `/v1/batches`): the request to create a batch, and the File and Batch
objects in OpenAI's shape, shaped from their rows (migrations/schema.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.batch.journal import CHAT_URL
from migrations.schema import BatchRow, FileRow

MAX_METADATA = 16  # OpenAI's bounds on `metadata`: pairs, key and value lengths
NO_NUL = r"^[^\x00]*$"  # `metadata` is stored as JSONB, which refuses the NUL character
Key = Annotated[str, Field(max_length=64, pattern=NO_NUL)]
Value = Annotated[str, Field(max_length=512, pattern=NO_NUL)]

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
UNFINISHED: tuple[BatchStatus, ...] = ("validating", "in_progress", "finalizing", "cancelling")


def unix(moment: datetime | None) -> int | None:
    """A stored time as OpenAI's Unix seconds (SQLite gives back naive datetimes: they were stored in UTC)."""
    if moment is None:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


class BatchCreateRequest(BaseModel):
    # Unknown fields (`output_expires_after`...) are tolerated, as on every endpoint: SDKs add new ones often.
    model_config = ConfigDict(extra="ignore", strict=True)

    input_file_id: str = Field(min_length=1, max_length=64, description="a file uploaded with purpose `batch`")
    endpoint: Literal["/v1/chat/completions"] = Field(description="the one endpoint batches run on")
    completion_window: Literal["24h"]
    metadata: dict[Key, Value] | None = Field(None, max_length=MAX_METADATA)


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, row: FileRow) -> FileObject:
        return cls(
            id=row.id, bytes=row.bytes, created_at=unix(row.created_at) or 0, filename=row.filename, purpose=row.purpose
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = CHAT_URL
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None

    @classmethod
    def of(cls, row: BatchRow) -> Batch:
        times: dict[str, Any] = {
            name: unix(getattr(row, name))
            for name in (
                "created_at",
                "in_progress_at",
                "expires_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "cancelling_at",
                "cancelled_at",
            )
        }
        return cls(
            id=row.id,
            endpoint=row.endpoint,
            input_file_id=row.input_file_id,
            completion_window=row.completion_window,
            status=row.status,
            output_file_id=row.output_file_id,
            error_file_id=row.error_file_id,
            metadata=row.meta,
            errors=BatchErrors(data=[BatchError(**e) for e in row.errors]) if row.errors else None,
            request_counts=RequestCounts(total=row.total, completed=row.completed, failed=row.failed),
            **times,
        )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
