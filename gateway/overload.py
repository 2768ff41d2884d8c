"""Bounded in-flight chat requests: past the bound, answer 429 with Retry-After at once.

Counting happens in ASGI, from the request's arrival to its response's last byte, so a stream
holds its slot for as long as it runs. Refusing early keeps memory flat under overload, and the
Retry-After header turns client retry storms into paced retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response


@dataclass
class InFlight:
    """The count the middleware keeps; /readyz and /metrics read it."""

    limit: int
    current: int = 0
    rejected: int = 0


class InFlightLimit:
    def __init__(self, app: ASGIApp, state: InFlight, path_prefix: str = "/v1/chat/") -> None:
        self.app = app
        self.state = state
        self.path_prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.current >= state.limit:
            state.rejected += 1
            response = error_response(
                429, f"The gateway is at its limit of {state.limit} requests in flight; retry shortly.",
                code="overloaded",
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
