"""A pooled connection the server closed before answering (uvicorn, hence vLLM, closes idle keep-alive connections
after 5 s; a request sent just then meets a closed socket) is tried again on a fresh connection, streamed or not,
instead of failing the call. A server that closes every connection unanswered still fails it, as `disconnected`."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from experts.client import ExpertFailure
from experts.openai_client import OpenAIClient, ServerSession
from experts.registry import ExpertConfig

_COMPLETION = {"id": "c", "object": "chat.completion", "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
_CHUNK = {"id": "c", "object": "chat.completion.chunk", "model": "m",
          "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}


class ClosingServer:
    """Answers the first `answered` requests on each connection (keeping it alive), then closes it unanswered:
    gracefully, or with a reset (what a client writing to a socket the server already closed gets)."""

    def __init__(self, answered: int, reset: bool = False) -> None:
        self.answered = answered
        self.reset = reset
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(self.answered):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = json.loads(await reader.readexactly(length))
                self.requests += 1
                if body.get("stream"):
                    payload, kind = f"data: {json.dumps(_CHUNK)}\n\ndata: [DONE]\n\n".encode(), b"text/event-stream"
                else:
                    payload, kind = json.dumps(_COMPLETION).encode(), b"application/json"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind +
                             b"\r\ncontent-length: %d\r\nconnection: keep-alive\r\n\r\n" % len(payload) + payload)
                await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request arrives: the connection closes without an answer
            self.requests += 1
            if self.reset:
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _complete(client: OpenAIClient) -> str:
    reply = await client.complete([{"role": "user", "content": "hello"}], {})
    return str(reply["choices"][0]["message"]["content"])


async def _stream(client: OpenAIClient) -> str:
    chunks: AsyncIterator[dict] = client.stream([{"role": "user", "content": "hello"}], {})
    return "".join([chunk["choices"][0]["delta"]["content"] async for chunk in chunks])


async def _calls(server: ClosingServer, call: Callable[[OpenAIClient], Awaitable[str]], times: int) -> list[str]:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1"
    session = ServerSession(base)
    client = OpenAIClient(ExpertConfig(name="e", model="m", api_base=base, timeout_s=5), session)
    try:
        return [await call(client) for _ in range(times)]
    finally:
        await session.aclose()
        listening.close()
        await listening.wait_closed()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("call", [_complete, _stream], ids=["complete", "stream"])
def test_a_connection_closed_before_answering_is_tried_again_on_a_fresh_one(call: Callable, reset: bool) -> None:
    server = ClosingServer(answered=1, reset=reset)
    # The second call reuses the first one's pooled connection, which the server then closes unanswered.
    assert asyncio.run(_calls(server, call, times=3)) == ["hi", "hi", "hi"]
    assert (server.connections, server.requests) == (3, 5)


def test_a_server_that_never_answers_still_fails_the_call() -> None:
    server = ClosingServer(answered=0)
    with pytest.raises(ExpertFailure) as failure:
        asyncio.run(_calls(server, _complete, times=1))
    assert (failure.value.kind, failure.value.status, failure.value.can_fall_back) == ("disconnected", 502, True)
    assert server.connections == 2  # the call and its one retry (connect_retries: 1)
