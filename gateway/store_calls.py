"""Blocking database calls from the endpoints: run off the event loop, and a database that is down answers 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import APIError

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StoreCalls:
    """One store's calls: `await calls(store.method, *args)`. The 503 leaves in the endpoint's protocol's shape (the
    APIError handler shapes it by path), with `message` for the client and `code`; the log line names the store."""

    def __init__(self, store: str, message: str, code: str) -> None:
        self.store = store
        self.message = message
        self.code = code

    async def __call__(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except SQLAlchemyError as exc:
            log.warning("%s: database unavailable (%s)", self.store, type(exc).__name__)
            raise APIError(503, self.message, code=self.code) from None
