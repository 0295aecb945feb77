"""Request ids in every log line, one access-log line per request, and the per-route request metrics."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("app.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# Query parameters that carry credentials (browsers pass the stream token as ?access_token=).
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:access_token|api_key|apikey|token|key|password|secret)=)[^&;\s\"']*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Credentials out: secret query parameters become ``***``, and so does any known secret wherever it is."""
    text = _SECRET_PARAM.sub(r"\1***", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def escape_controls(text: str) -> str:
    """One log record, one line: control characters (CR, LF, ...) in client input are shown, not obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


class SafeFormatter(logging.Formatter):
    """Text or JSON lines with secrets redacted; client input can neither forge a line nor leak a key."""

    def __init__(self, fmt: str, json_lines: bool = False) -> None:
        super().__init__(fmt)
        self.json_lines = json_lines
        self.secrets: set[str] = set()

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage(), self.secrets)
        trace = redact(self.formatException(record.exc_info), self.secrets) if record.exc_info else ""
        if self.json_lines:
            entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                     "request_id": getattr(record, "request_id", "-"), "message": message}
            if trace:
                entry["exception"] = trace
            return json.dumps(entry, ensure_ascii=False)
        clean = logging.makeLogRecord(record.__dict__)
        clean.message, clean.asctime = escape_controls(message), self.formatTime(record)
        line = self.formatMessage(clean)
        if trace:  # continuation lines are marked, so no line of a traceback can pass for a record of its own
            line += "".join(f"\n  | {escape_controls(part)}" for part in trace.splitlines())
        return line


def configure_logging(level: str, log_format: str = "text", secrets: Iterable[str] = ()) -> None:
    """Log to stderr with the request id; idempotent, so several apps in one process share one handler."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = next((h for h in root.handlers if getattr(h, "_asr", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._asr = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    formatter = handler.formatter if isinstance(handler.formatter, SafeFormatter) else None
    if formatter is None or formatter.json_lines != (log_format == "json"):
        known = formatter.secrets if formatter else set()
        formatter = SafeFormatter(LOG_FORMAT, json_lines=log_format == "json")
        formatter.secrets |= known
        handler.setFormatter(formatter)
    formatter.secrets.update(s for s in secrets if s)


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

    def __init__(self, app: ASGIApp, metrics: Metrics, replica: str, tag_request_id: bool = True) -> None:
        self.app, self.metrics = app, metrics
        self.replica = replica.encode()
        self.tag_request_id = tag_request_id  # False where a proxy in front adds X-Request-ID itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = new_request_id(scope)
        token = request_id.set(rid)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, self._tagging(send, "websocket.accept", rid))
                return
            await self._http(scope, receive, send, rid)
        finally:
            request_id.reset(token)

    def _tagging(self, send: Send, opening: str, rid: str) -> Send:
        """``send``, with the request id and the replica added to the headers of the ``opening`` message."""

        async def tagged(message: Message) -> None:
            if message["type"] == opening:
                ids = [(b"x-request-id", rid.encode())] if self.tag_request_id else []
                message["headers"] = [*message.get("headers", []), *ids, (b"x-replica", self.replica)]
            await send(message)

        return tagged

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        started = time.perf_counter()
        status = 500

        tagged = self._tagging(send, "http.response.start", rid)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await tagged(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            access_log.log(level, "%s %s %d %.0f ms", scope["method"], scope["path"], status, elapsed * 1000)
