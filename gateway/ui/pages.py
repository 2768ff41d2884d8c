"""The dashboard's page: GET /ui (the HTML shell, which holds no data) and its assets under /ui/static/.

The page asks nothing of any other host: the Content-Security-Policy below makes the browser refuse scripts, styles,
images, fonts and API calls from anywhere but the gateway, so a stray external URL fails loudly instead of leaking
requests from clusters without internet. The key lives in the browser's sessionStorage and is sent by the page's
script as a bearer header to /ui/api (api_router.py): nothing here needs or sees it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import APIError

STATIC_DIR = Path(__file__).parent / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load(directory: Path) -> dict[str, Asset]:
    """The packaged files, read once: a handful of small files, served by name (never by a path from the URL)."""
    assets = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in _TYPES:
            body = path.read_bytes()
            assets[path.name] = Asset(body, _TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return assets


ASSETS = _load(STATIC_DIR)

page_routes = APIRouter(include_in_schema=False)


def _serve(asset: Asset, request: Request) -> Response:
    # no-cache: the browser revalidates, so an upgraded gateway's page is never mixed with a stale script.
    headers = {
        "etag": asset.etag,
        "cache-control": "no-cache",
        "content-security-policy": _POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@page_routes.get("/ui")
async def page(request: Request) -> Response:
    return _serve(ASSETS["index.html"], request)


@page_routes.get("/ui/static/{name}")
async def static(name: str, request: Request) -> Response:
    asset = ASSETS.get(name)
    if asset is None or name == "index.html":
        raise APIError(404, f"No dashboard asset named {name!r}.", code="not_found")
    return _serve(asset, request)
