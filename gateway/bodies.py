"""JSON request bodies read with bounded work on the event loop.

A body is parsed by pydantic-core's JSON parser (which refuses NaN and Infinity, not JSON, and nesting
past its recursion limit), walked once to bound its shape (nesting depth, number of JSON values, numbers
every upstream can take, text that is valid Unicode everywhere), then validated against the endpoint's
model, whose fields carry their own bounds. A body up to `INLINE_BYTES` is read on the event loop (a
millisecond at most). A larger one is read in a worker process: a 4 MB body of tiny values takes 25-75 ms
to parse on a 2-core machine and more to validate, which would stall every other request, and the memory
it takes comes back to the operating system with the worker's heap, not the gateway's.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from gateway.errors import APIError, validation_message

INLINE_BYTES = 16 * 1024
MAX_DEPTH = 64  # JSON nesting; a tool's JSON schema rarely passes 15
MAX_VALUES = 100_000  # JSON values in one body; a 2,048-message conversation holds about 6,000
INT_BOUND = 2**63  # integers beyond 64 bits reach no upstream intact

_M = TypeVar("_M", bound=BaseModel)


class BodyError(ValueError):
    """Why a body is refused, and where: what the 400 says."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)  # both in args, so the error pickles whole from the worker
        self.message = message
        self.param = param


def read_body(raw: bytes, model: type[_M]) -> _M:
    """`raw` as an instance of `model`, or a BodyError naming the field at fault."""
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:  # the parser's own words: what it expected and where (line, column)
        raise BodyError(f"We could not parse the JSON body of your request: {exc}.") from None
    return parsed_body(value, model)


def parsed_body(value: Any, model: type[_M]) -> _M:
    """A parsed JSON body as an instance of `model`, or a BodyError naming the field at fault."""
    if not isinstance(value, dict):
        raise BodyError("We could not parse the JSON body of your request: expected a JSON object.")
    _check_shape(value)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise BodyError(*validation_message(exc.errors(include_input=False))) from None


def _check_shape(body: dict[str, Any]) -> None:
    """Every value of the body within the bounds above, else a BodyError naming the first path at fault.

    The walk keeps no paths (a 64 KB body can hold 30,000 values); a fault is walked to again to name it.
    """
    count = 0
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise BodyError(f"The request holds more than {MAX_VALUES} JSON values.")
        fault = _fault(value, depth)
        if fault is not None:
            path = _path_to(body, lambda v, d: _fault(v, d) is not None) or ()
            raise BodyError(_at(path, fault), ".".join(path) or None)
        if isinstance(value, dict):
            stack.extend((key, depth + 1) for key in value)
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _fault(value: Any, depth: int) -> str | None:
    """What is wrong with one value itself (not its members), if anything."""
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else "the text is not valid Unicode (a lone surrogate)"
    if isinstance(value, dict | list):
        return f"JSON nests deeper than {MAX_DEPTH} levels" if depth >= MAX_DEPTH else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"  # 1e400 parses, as infinity
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_BOUND <= value < INT_BOUND:
        return "integers must fit in 64 bits"
    return None


def _path_to(value: Any, faulty: Callable[[Any, int], bool], depth: int = 0) -> tuple[str, ...] | None:
    """The path to the first faulty value (keys count as values of their dict), depth first."""
    if faulty(value, depth):
        return ()
    if isinstance(value, dict) and depth < MAX_DEPTH:
        for key, item in value.items():
            if faulty(key, depth + 1):
                return (key,)
            if (rest := _path_to(item, faulty, depth + 1)) is not None:
                return (key, *rest)
    elif isinstance(value, list) and depth < MAX_DEPTH:
        for i, item in enumerate(value):
            if (rest := _path_to(item, faulty, depth + 1)) is not None:
                return (str(i), *rest)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _at(path: tuple[str, ...], message: str) -> str:
    where = f" at '{'.'.join(path)}'" if path else ""
    return f"Invalid request{where}: {message}."


def _read_in_worker(raw: bytes, model: type[_M]) -> _M | BodyError:
    try:
        return read_body(raw, model)
    except BodyError as error:
        return error


class BodyReader:
    """Reads bodies for the app: small ones inline, large ones in one worker process, started on first use (it
    takes about a second, once; a gateway that never sees a large body never starts it)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the worker imports only this module's few dependencies, and forks none of the app's threads.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def read(self, raw: bytes, model: type[_M]) -> _M:
        """`raw` as `model`, or the 400 APIError naming the field at fault."""
        if len(raw) <= INLINE_BYTES:
            try:
                return read_body(raw, model)
            except BodyError as error:
                raise bad_request(error) from None
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._worker(), _read_in_worker, raw, model)
        except BrokenProcessPool:  # the worker died (killed for memory, say): the next body gets a new one
            self._pool = None
            raise APIError(503, "The gateway could not read the request body; retry it.", code="body_reader_failed",
                           headers={"retry-after": "1"}) from None
        if isinstance(result, BodyError):
            raise bad_request(result)
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def bad_request(error: BodyError) -> APIError:
    return APIError(400, error.message, param=error.param, code="invalid_request")


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its JSON body itself: the body is `model` (see `with_body_schemas`)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def with_body_schemas(openapi: dict[str, Any], models: list[type[BaseModel]]) -> dict[str, Any]:
    """`openapi` with the schemas of these body models (and the models they hold) among its components."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return openapi
