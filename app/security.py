"""Optional bearer-token authentication (``ASR_API_KEY``) for every route except the health probes."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.requests import HTTPConnection

from .errors import ApiError


def token_ok(conn: HTTPConnection, api_key: str | None, allow_query: bool = False) -> bool:
    """True when no key is configured or the connection presents it.

    WebSocket clients in browsers cannot set headers, so streams may pass it as ``?access_token=`` instead."""
    if api_key is None:
        return True
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = conn.query_params.get("access_token", "") if allow_query else ""
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


async def require_api_key(request: Request) -> None:
    """Route dependency: 401 unless the request carries ``Authorization: Bearer <ASR_API_KEY>``."""
    key = request.app.state.settings.api_key
    if not token_ok(request, key.get_secret_value() if key else None):
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       {"WWW-Authenticate": "Bearer"})
