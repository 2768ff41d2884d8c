"""The gateway's ASGI middleware: bounded bodies and bounded in-flight routed requests.

Bodies: past MOE_MAX_BODY_BYTES a request gets 413 before its body is read (see BodyLimit).

In flight: past the bound, answer 429 with Retry-After at once. Counting happens in ASGI, from the request's arrival to its response's last byte, so a stream
holds its slot for as long as it runs. Refusing early keeps memory flat under overload, and the
Retry-After header turns client retry storms into paced retries.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response

# The endpoints whose requests are routed to experts, each protocol's (the batch endpoints only queue work).
ROUTED_PATHS = ("/v1/chat/", "/v1/responses", "/v1/messages", "/v1/completions")


@dataclass
class InFlight:
    """The count the middleware keeps; /readyz and /metrics read it."""

    limit: int
    current: int = 0
    rejected: int = 0


class InFlightLimit:
    def __init__(self, app: ASGIApp, state: InFlight, routed: tuple[str, ...] = ROUTED_PATHS) -> None:
        self.app = app
        self.state = state
        self.routed = routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.routed):
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.current >= state.limit:
            state.rejected += 1
            response = error_response(
                429, f"The gateway is at its limit of {state.limit} requests in flight; retry shortly.",
                code="overloaded", path=scope["path"],
            )
            response.headers["retry-after"] = "1"
            await response(scope, receive, send)
            return
        state.current += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.current -= 1

        async def tracking_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            release()


class BodyLimit:
    """Answers 413 for request bodies over the limit, by header or by counting what actually arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: tuple[str, int] | None = None) -> None:
        """`uploads`: a path prefix whose bodies are files (the Batch API's), and their own, larger limit."""
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if self.uploads is not None and scope["path"].startswith(self.uploads[0]):
            limit = self.uploads[1]
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, scope["path"], limit)
            return
        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                # The app may turn the aborted read into its own error reply: answer 413 instead.
                if not started:
                    started = True
                    await self._reject(send, scope["path"], limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if too_large and not started:
            await self._reject(send, scope["path"], limit)

    async def _reject(self, send: Send, path: str, limit: int) -> None:
        response = error_response(
            413, f"Request body exceeds the gateway's limit of {limit} bytes.", code="request_too_large",
            path=path,
        )
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(Exception):
    pass
