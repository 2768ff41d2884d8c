"""Every error leaves the gateway in its endpoint's protocol's shape: OpenAI's {"error": {"message", "type", "param",
"code"}} everywhere but Anthropic's Messages endpoints, which answer {"type": "error", "error": {"type", "message"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})  # e.g. Retry-After on a 429

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}


# Anthropic's error types (docs.anthropic.com, "Errors"), by status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
ANTHROPIC_PATHS = "/v1/messages"  # the prefix of the endpoints whose errors take Anthropic's shape


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def error_body_for(
    path: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The error body in the shape of the protocol served at `path`."""
    if path.startswith(ANTHROPIC_PATHS):
        return anthropic_error_body(status, message)
    return error_body(status, message, param=param, code=code)


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, path: str = ""
) -> JSONResponse:
    return JSONResponse(error_body_for(path, status, message, param=param, code=code), status_code=status)


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """The first validation error as OpenAI words it: a sentence, and the field's dotted path as `param`.

    A value of a union type (`stop`: a string or a list) fails once per member; the member whose type it had
    tells why (a list too long), not the others (not a string): errors of the wrong type come last.
    """
    first = min(errors, key=lambda e: str(e.get("type", "")).endswith("_type"))
    # FastAPI prefixes the location with "body", and pydantic names validator functions inside unions
    # ("function-after[...]"); OpenAI names the field itself.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and "[" not in str(p)]
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: expected a JSON object.", None
    param = ".".join(loc) or None
    where = f" at '{param}'" if param else ""
    return f"Invalid request{where}: {first.get('msg', 'invalid value')}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        body = error_body_for(request.url.path, exc.status, exc.message, param=exc.param, code=exc.code)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return error_response(400, message, param=param, code="invalid_request", path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "The gateway hit an internal error; it has been logged.", code="internal_error",
                              path=request.url.path)
