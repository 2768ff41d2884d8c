"""OpenAI's Batch API: `/v1/files` and `/v1/batches`. HTTP only: the files are gateway/batch/files.py's, the batches'
state gateway/batch/batches.py's, and running them gateway/batch/jobs.py's, in this process, beside the app's
services (started after them, stopped before them: this router's lifespan nests in the app's).

Files and batches belong to the caller's tenant; another tenant's answer 404, as if they did not exist.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from gateway.batch.batches import BatchStore
from gateway.batch.files import FileStore, Tenant, new_id, tenant_of
from gateway.batch.jobs import LEASE_S, BatchJobs
from gateway.batch.protocol import Batch, BatchCreateRequest, BatchList, FileDeleted, FileList, FileObject
from gateway.bodies import BodyReader, json_body
from gateway.errors import APIError
from gateway.keys.guard import BEARER_SECURITY, caller, metered_caller
from gateway.keys.store import ApiKey
from gateway.services import Services
from gateway.settings import Settings
from gateway.store_calls import StoreCalls
from migrations.schema import BatchRow, FileRow

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # what the gateway's ids look like; anything else names nothing
ID = re.compile(ID_PATTERN)
Caller = Annotated[ApiKey | None, Depends(caller)]



_stored = StoreCalls(
    "batch api", "Files and batches cannot be read or changed right now; retry shortly.", "batch_store_unavailable"
)


def batch_routes(settings: Settings) -> APIRouter:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services: Services = app.state.services
        engine = services.decision_log.engine
        app.state.files = FileStore(engine, settings.moe_files_dir)
        app.state.batches = BatchStore(engine, LEASE_S)
        app.state.batch_jobs = jobs = BatchJobs(services, app.state.files, app.state.batches)
        await jobs.start()
        try:
            yield
        finally:
            await jobs.stop()

    routes = APIRouter(lifespan=lifespan, tags=["batch"])

    # -- files ----------------------------------------------------------------------------------
    @routes.post("/v1/files")
    async def upload_file(
        request: Request,
        key: Caller,
        file: Annotated[UploadFile, File(description="JSONL: one OpenAI batch request per line")],
        purpose: Annotated[str, Form(max_length=50, description="`batch`, the one purpose the gateway stores")],
    ) -> FileObject:
        if purpose != "batch":
            raise APIError(
                400,
                f"Files of purpose `{purpose}` are not supported: upload batch inputs with purpose `batch`.",
                param="purpose",
                code="unsupported_purpose",
            )
        if file.size is not None and file.size > settings.moe_max_file_bytes:
            raise APIError(
                413,
                f"The file exceeds the limit of {settings.moe_max_file_bytes} bytes.",
                param="file",
                code="file_too_large",
            )
        files: FileStore = request.app.state.files
        row = await _stored(files.upload, file.file, file.filename or "", key, settings.moe_max_file_bytes)
        return FileObject.of(row)

    @routes.get("/v1/files")
    async def list_files(
        request: Request,
        key: Caller,
        purpose: Annotated[Literal["batch", "batch_output"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    ) -> FileList:
        files: FileStore = request.app.state.files
        rows, more = await _stored(
            files.list, tenant_of(key), purpose=purpose, after=after, limit=limit, newest_first=order == "desc"
        )
        data = [FileObject.of(row) for row in rows]
        return FileList(data=data, first_id=_first(data), last_id=_last(data), has_more=more)

    @routes.get("/v1/files/{file_id}")
    async def retrieve_file(request: Request, key: Caller, file_id: str) -> FileObject:
        return FileObject.of(await _file(request, file_id, tenant_of(key)))

    @routes.get(
        "/v1/files/{file_id}/content",
        response_class=FileResponse,
        responses={200: {"content": {"application/jsonl": {}}}},
    )
    async def file_content(request: Request, key: Caller, file_id: str) -> FileResponse:
        row = await _file(request, file_id, tenant_of(key))
        files: FileStore = request.app.state.files
        path = files.path(row.id)
        if not path.is_file():  # a file store that replicas do not share, or one emptied by hand
            log.warning("file %s: listed in the database but not in the file store %s", row.id, files.root)
            raise _no_file(file_id)
        return FileResponse(path, media_type="application/jsonl", filename=row.filename)

    @routes.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, key: Caller, file_id: str) -> FileDeleted:
        files: FileStore = request.app.state.files
        if not ID.fullmatch(file_id) or not await _stored(files.delete, file_id, tenant_of(key)):
            raise _no_file(file_id)
        return FileDeleted(id=file_id, deleted=True)

    # -- batches --------------------------------------------------------------------------------
    @routes.post("/v1/batches", openapi_extra={**json_body(BatchCreateRequest), "security": BEARER_SECURITY})
    async def create_batch(request: Request) -> Batch:
        key = await metered_caller(request)  # a key over its budget starts no batch
        bodies: BodyReader = request.app.state.bodies
        body = await bodies.read(await request.body(), BatchCreateRequest)
        tenant = tenant_of(key)
        source = await _file(request, body.input_file_id, tenant, param="input_file_id")
        if source.purpose != "batch":
            raise APIError(
                400,
                f"File {source.id} is a batch's output, not a batch input (purpose `batch`).",
                param="input_file_id",
                code="invalid_input_file",
            )
        jobs: BatchJobs = request.app.state.batch_jobs
        row = BatchRow(
            id=new_id("batch_"),
            status="validating",
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            input_file_id=source.id,
            meta=body.metadata,
            total=0,
            completed=0,
            failed=0,
            api_key_id=key.id if key else None,
            tenant=tenant,
            runner=jobs.runner,
        )
        batches: BatchStore = request.app.state.batches
        row = await _stored(batches.create, row)
        jobs.run(row.id)
        return Batch.of(row)

    @routes.get("/v1/batches")
    async def list_batches(
        request: Request,
        key: Caller,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    ) -> BatchList:
        batches: BatchStore = request.app.state.batches
        rows, more = await _stored(batches.list, tenant_of(key), after=after, limit=limit)
        data = [Batch.of(row) for row in rows]
        return BatchList(data=data, first_id=_first(data), last_id=_last(data), has_more=more)

    @routes.get("/v1/batches/{batch_id}")
    async def retrieve_batch(request: Request, key: Caller, batch_id: str) -> Batch:
        batches: BatchStore = request.app.state.batches
        row = await _stored(batches.get, batch_id, tenant_of(key)) if ID.fullmatch(batch_id) else None
        if row is None:
            raise _no_batch(batch_id)
        return Batch.of(row)

    @routes.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, key: Caller, batch_id: str) -> Batch:
        batches: BatchStore = request.app.state.batches
        row = await _stored(batches.cancel, batch_id, tenant_of(key)) if ID.fullmatch(batch_id) else None
        if row is None:
            raise _no_batch(batch_id)
        if row.status not in ("cancelling", "cancelled"):
            raise APIError(
                400, f"Batch {batch_id} is {row.status} and can no longer be cancelled.", code="batch_not_cancellable"
            )
        return Batch.of(row)

    return routes


async def _file(request: Request, file_id: str, tenant: Tenant, param: str | None = None) -> FileRow:
    files: FileStore = request.app.state.files
    row = await _stored(files.get, file_id, tenant) if ID.fullmatch(file_id) else None
    if row is None:
        raise _no_file(file_id, param)
    return row


def _no_file(file_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such File object: {file_id[:64]}", param=param, code="file_not_found")


def _no_batch(batch_id: str) -> APIError:
    return APIError(404, f"No such Batch object: {batch_id[:64]}", code="batch_not_found")


def _first(data: list[FileObject] | list[Batch]) -> str | None:
    return data[0].id if data else None


def _last(data: list[FileObject] | list[Batch]) -> str | None:
    return data[-1].id if data else None
