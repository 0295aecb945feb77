"""The microphone page: ``GET /demo`` (``GET /`` redirects there) and its files, ``GET /static/{name}``.

The files are package data in ``app/static``. They are public even with ``ASR_API_KEY`` set: the page holds
nothing secret, and the key it is given goes on the WebSocket URL. Everything the page loads comes from this
server; its Content-Security-Policy makes the browser refuse anything else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from ..errors import ApiError

STATIC = Path(__file__).resolve().parents[1] / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = STATIC / name
    if "/" in name or path.suffix not in TYPES or not path.is_file():
        raise ApiError(404, "not found")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    query = request.url.query  # keeps ?access_token= and ?autostart=
    return RedirectResponse("/demo" + (f"?{query}" if query else ""), status_code=307)


@router.get("/demo")
async def demo() -> FileResponse:
    return _file("demo.html")


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    return _file(name)
