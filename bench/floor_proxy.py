"""The floor of the overhead benchmarks: the least a Python proxy adds in front of the upstream.

Served the way the gateway is (uvicorn, one worker, its default event loop and HTTP parser, no access
log) and calling the upstream the way the gateway calls an expert (one pooled aiohttp session, no
connection limit), and nothing else: no parsing, validation, routing or logging. A request under /v1
goes to the upstream as it came (method, path, body, content type); the answer comes back as it went,
streamed through chunk by chunk when the upstream streams (text/event-stream). What the gateway adds
beyond this is the price of what it does; the floor is the price of being a Python proxy at all.

    python -m bench.floor_proxy --upstream http://127.0.0.1:9100 --port 9101
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build_app(upstream: str) -> Starlette:
    """The proxy in front of `upstream` (its origin, e.g. http://127.0.0.1:9100)."""
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal session
        async with aiohttp.ClientSession(upstream, connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60.0)) as session:
            yield

    async def forward(request: Request) -> Response:
        assert session is not None
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        answer = await session.request(request.method, request.url.path, data=await request.body(), headers=headers)
        media_type = answer.headers.get("content-type")
        if media_type and media_type.startswith("text/event-stream"):
            return StreamingResponse(answer.content.iter_any(), status_code=answer.status, media_type=media_type,
                                     background=BackgroundTask(answer.release))
        try:
            body = await answer.read()
        finally:
            answer.release()
        return Response(body, status_code=answer.status, media_type=media_type)

    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=["GET", "POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9100")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    args = parser.parse_args()
    uvicorn.run(build_app(args.upstream), host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
