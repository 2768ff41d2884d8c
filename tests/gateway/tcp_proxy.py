"""A loopback TCP relay that a test can cut and restore: a real network outage in front of a real server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bench.upstream import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def up(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)

    def down(self) -> None:
        """Stop accepting and reset every open connection, as a crashed server would."""

        async def stop() -> None:
            if self._server:
                self._server.close()
                self._server = None
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._open.update({client_w, server_w})

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.transport.abort()
                self._open.discard(writer)

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


@contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    thread = threading.Thread(target=proxy._loop.run_forever, daemon=True)
    thread.start()
    proxy.up()
    try:
        yield proxy
    finally:
        proxy.down()
        proxy._loop.call_soon_threadsafe(proxy._loop.stop)
        thread.join(5)
