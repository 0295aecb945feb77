"""Request ids in every log line, one access-log line per request, and the per-route request metrics."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str) -> None:
    """Log to stderr with the request id; idempotent, so several apps in one process share one handler."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_asr", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._asr = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
        root.addHandler(handler)


def route_label(scope: Scope) -> str:
    """The matched route's template (never the raw path, which would explode the label set)."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def new_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex[:16]


class RequestContext:
    """Pure ASGI middleware (no body buffering, so uploads still stream through to the size check)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = new_request_id(scope)
        token = request_id.set(rid)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send, rid)
        finally:
            request_id.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            access_log.log(level, "%s %s %d %.0f ms", scope["method"], scope["path"], status, elapsed * 1000)
