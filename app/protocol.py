"""uvicorn's HTTP protocol with the limits a public server needs: header and body deadlines, a connection cap.

uvicorn waits for ever on a client that dribbles its headers a byte at a time (its keep-alive timer is reset
by every byte) or declares a body it never sends, and it accepts connections until file descriptors run out.
These guards live at the protocol level because no ASGI code runs before the headers are complete.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _response(status: str, message: str) -> bytes:
    body = message.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """Subclassed per server by :func:`guarded_protocol`, which sets the three limits."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    max_connections: int = 512

    _deadline: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse("503 Service Unavailable", "too many open connections; retry shortly")
            return
        self._arm(self.header_timeout_s, "408 Request Timeout", "the request headers did not arrive in time")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.header_timeout_s, "408 Request Timeout", "the request headers did not arrive in time")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        upgrading = self.parser.should_upgrade() and self._should_upgrade()  # the WebSocket has limits of its own
        if not upgrading and not self.transport.is_closing():
            self._arm(self.body_timeout_s, "408 Request Timeout", "the request body did not arrive in time")

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, status: str, message: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._refuse, status, message)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: str, message: str) -> None:
        """Answer (unless a response has begun) and close; the app sees the client as gone."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_response(status, message))
        self.transport.close()


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """A protocol class with these limits, for ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "max_connections": max_connections})
