"""gateway/middleware.py's BodyLimit middleware, driven as ASGI: the declared length, the running total, the 413."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import error_body, error_response
from gateway.middleware import BodyLimit

LIMIT = 1000


class ReadsEverything:
    """An app that reads the whole body, then answers 200 with how many bytes it got."""

    def __init__(self) -> None:
        self.received = 0
        self.answered = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["path"] == "/v1/chat/completions"  # the request's own scope is passed on
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


class AnswersFirst:
    """An app that starts its reply before reading the body (a streamed answer, say)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.body", "body": b" and done"})


class StartsThenReads:
    """An app that sends its reply's start, then reads the body before sending anything else."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.body", "body": b"done"})


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


async def test_a_reply_already_started_is_not_followed_by_a_second_one() -> None:
    """Once the app has begun answering, an over-long body can only cut the reply short, not start a 413."""
    status, body, read = await send_body(AnswersFirst(), [b"x" * 600, b"x" * 600])  # one start only (send_body)
    assert (status, body, read) == (200, b"started", 2)
    status, body, _ = await send_body(AnswersFirst(), [b"x" * 600, b"x" * 400])
    assert (status, body) == (200, b"started and done")


async def test_the_413_is_json() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await BodyLimit(ReadsEverything(), 10)._reject(send, "/v1/chat/completions", 10)
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 413 and headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


async def test_the_413_takes_the_protocols_shape_and_uploads_their_own_limit() -> None:
    """Anthropic's endpoints answer in Anthropic's error shape; Batch API uploads are bounded by their own limit."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def answers(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limited = BodyLimit(answers, 10, uploads=("/v1/files", 1000))
    declared = [(b"content-length", b"500")]
    await limited({"type": "http", "path": "/v1/messages", "headers": declared}, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"type": "error", "error": {
        "type": "request_too_large", "message": "Request body exceeds the gateway's limit of 10 bytes."}}
    sent.clear()
    await limited({"type": "http", "path": "/v1/files", "headers": declared}, receive, send)
    assert sent[0]["status"] != 413
    sent.clear()
    await limited({"type": "http", "path": "/v1/files", "headers": [(b"content-length", b"1001")]}, receive, send)
    assert sent[0]["status"] == 413 and b"1000 bytes" in sent[1]["body"]


def test_error_bodies_are_openai_shaped() -> None:
    assert error_body(404, "No such model.", param="model", code="model_not_found") == {
        "error": {"message": "No such model.", "type": "not_found_error", "param": "model", "code": "model_not_found"}}
    assert error_body(500, "Oops.") == {"error": {"message": "Oops.", "type": "api_error", "param": None, "code": None}}
    response = error_response(429, "Slow down.", param="messages", code="rate_limit_exceeded")
    assert response.status_code == 429
    assert json.loads(response.body) == {"error": {"message": "Slow down.", "type": "rate_limit_error",
                                                   "param": "messages", "code": "rate_limit_exceeded"}}


async def test_a_reply_started_without_a_body_yet_is_not_followed_by_a_413() -> None:
    status, body, _ = await send_body(StartsThenReads(), [b"x" * 600, b"x" * 600])  # one start only (send_body)
    assert (status, body) == (200, b"")


async def test_the_413_goes_out_as_soon_as_the_app_answers_not_when_it_returns() -> None:
    outer: list[dict[str, Any]] = []
    seen_when_answering: list[list[int]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:  # noqa: BLE001 - the aborted read
            await send({"type": "http.response.start", "status": 400, "headers": []})
            seen_when_answering.append([m["status"] for m in outer if m["type"] == "http.response.start"])
            await send({"type": "http.response.body", "body": b"bad request"})

    pieces = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 2

    async def receive() -> dict[str, Any]:
        return pieces.pop(0)

    async def send(message: dict[str, Any]) -> None:
        outer.append(message)

    await BodyLimit(app, LIMIT)({"type": "http", "path": "/v1/chat/completions", "headers": []}, receive, send)
    assert seen_when_answering == [[413]]
    assert [m["status"] for m in outer if m["type"] == "http.response.start"] == [413]
