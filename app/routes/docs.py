"""The API documentation behind the key: ``/openapi.json``, ``/docs`` and ``/redoc`` when ``ASR_API_KEY`` is set.

The schema describes every route and limit, which is worth hiding from whoever has no key. ``ASR_PUBLIC_DOCS``
serves FastAPI's own public pages instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from ..security import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)], include_in_schema=False)
OPENAPI_URL = "/openapi.json"


@router.get(OPENAPI_URL)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - docs")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - ReDoc")
