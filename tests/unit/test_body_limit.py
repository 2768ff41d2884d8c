"""gateway/errors.py's BodyLimit middleware, driven as ASGI: the declared length, the running total, the 413."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import BodyLimit

LIMIT = 1000


class ReadsEverything:
    """An app that reads the whole body, then answers 200 with how many bytes it got."""

    def __init__(self) -> None:
        self.received = 0
        self.answered = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.answered = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.received).encode()})


class TurnsErrorsIntoA400(ReadsEverything):
    """An app that catches a failed read and answers its own error, as a framework may."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception:  # noqa: BLE001 - what the middleware must overrule
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad request"})


async def send_body(app: Any, pieces: list[bytes], headers: list[tuple[bytes, bytes]] | None = None,
                    limit: int = LIMIT) -> tuple[int, bytes, int]:
    """(status, body, how many pieces the middleware read) for a request sent in `pieces`."""
    messages = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
                for i, piece in enumerate(pieces)]
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers or []}
    await BodyLimit(app, limit)(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent  # exactly one response, never two
    return starts[0]["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), read


def assert_413(status: int, body: bytes) -> None:
    assert status == 413
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert f"limit of {LIMIT} bytes" in error["message"]


async def test_many_small_pieces_over_the_limit_in_total_are_refused() -> None:
    app = ReadsEverything()
    status, body, read = await send_body(app, [b"x" * 100] * 20)
    assert_413(status, body)
    assert not app.answered
    assert read == 11  # refused at the piece that took the total past the limit, not after the whole body


async def test_a_body_of_exactly_the_limit_passes_in_pieces() -> None:
    app = ReadsEverything()
    status, body, _ = await send_body(app, [b"x" * 100] * 10)
    assert (status, body) == (200, b"1000")
    status, body, _ = await send_body(ReadsEverything(), [b"x" * 1000])
    assert (status, body) == (200, b"1000")


async def test_one_byte_over_the_limit_is_refused() -> None:
    status, body, _ = await send_body(ReadsEverything(), [b"x" * 500, b"x" * 501])
    assert_413(status, body)


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    app = ReadsEverything()
    status, body, read = await send_body(app, [b"x" * 10], headers=[(b"content-length", b"1001")])
    assert_413(status, body)
    assert read == 0 and not app.answered
    status, body, _ = await send_body(ReadsEverything(), [b"x" * 10], headers=[(b"content-length", b"1000")])
    assert (status, body) == (200, b"10")  # the declared length is within the limit: the body is counted as it comes


async def test_a_declared_length_that_lies_is_still_counted() -> None:
    for declared in (b"10", b"not-a-number"):
        status, body, _ = await send_body(ReadsEverything(), [b"x" * 600, b"x" * 600],
                                          headers=[(b"content-length", declared)])
        assert_413(status, body)


async def test_an_app_that_answers_its_own_error_for_the_aborted_read_gets_a_413_instead() -> None:
    app = TurnsErrorsIntoA400()
    status, body, _ = await send_body(app, [b"x" * 600, b"x" * 600])
    assert_413(status, body)


async def test_other_connections_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        message = await receive()
        await send({"type": "lifespan.startup.complete", "echo": message})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup", "body": b"x" * 5000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await BodyLimit(app, 10)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"] and sent[0]["type"] == "lifespan.startup.complete"
