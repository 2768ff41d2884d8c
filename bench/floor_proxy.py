"""The floor of the overhead benchmarks: the least a Python proxy adds in front of the upstream.

Served the way the gateway is (uvicorn, one worker, its default event loop and HTTP parser, no access
log) and calling the upstream the way the gateway calls an expert (one pooled httpx.AsyncClient: no
connection limit, 64 kept alive), and nothing else: no parsing, validation, routing or logging. A
request under /v1 goes to the upstream as it came (method, path, body, content type); the answer
comes back as it went, streamed through chunk by chunk when the upstream streams (text/event-stream).
What the gateway adds beyond this is the price of what it does; the floor is the price of being a
Python proxy at all.

    python -m bench.floor_proxy --upstream http://127.0.0.1:9100 --port 9101
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build_app(upstream: str) -> Starlette:
    """The proxy in front of `upstream` (its origin, e.g. http://127.0.0.1:9100)."""
    client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal client
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=upstream, limits=limits, timeout=60.0) as client:
            yield

    async def forward(request: Request) -> Response:
        assert client is not None
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        outgoing = client.build_request(request.method, request.url.path, content=await request.body(), headers=headers)
        answer = await client.send(outgoing, stream=True)
        media_type = answer.headers.get("content-type")
        if media_type and media_type.startswith("text/event-stream"):
            return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, media_type=media_type,
                                     background=BackgroundTask(answer.aclose))
        try:
            body = await answer.aread()
        finally:
            await answer.aclose()
        return Response(body, status_code=answer.status_code, media_type=media_type)

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
