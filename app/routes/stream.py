"""``/transcribe/stream``: the WebSocket side of a :class:`~app.stream_session.StreamSession`.

The route only moves bytes and JSON: text messages are parsed here (``config``, ``eof``), binary frames go to
the session, and the session's messages go back out in order. Any protocol breach becomes
``{"type": "error", "message": ...}`` followed by a close with a code that says what kind of breach it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from model.resample import prepare as prepare_resampler

from ..config import Settings
from ..observability import request_id
from ..pcm import ENCODINGS
from ..schemas import StreamConfigMessage
from ..security import token_ok
from ..state import ServiceState
from ..stream_session import StreamError, StreamLimits, StreamOptions, StreamSession

log = logging.getLogger(__name__)
router = APIRouter(tags=["streaming"])
ROUTE = "/transcribe/stream"


def limits_from(state: ServiceState) -> StreamLimits:
    s = state.settings
    return StreamLimits(max_frame_bytes=s.stream_max_frame_bytes, max_seconds=s.stream_max_seconds,
                        partial_interval_s=s.stream_partial_interval_ms / 1000,
                        endpoint_silence_s=s.stream_endpoint_silence_ms / 1000,
                        partial_beam_size=s.stream_partial_beam_size, partials_from_ctc=s.stream_partials == "ctc",
                        sample_rate=state.worker.sample_rate,
                        max_segment_s=state.worker.max_segment_seconds,
                        max_pending_finals=s.stream_max_pending_finals, queue_wait_s=s.decode_wait_s)


def parse_control(text: str, state: ServiceState) -> StreamOptions | None:
    """A text message: the options of a ``config`` message, or None for ``eof``."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as e:
        raise StreamError(1007, f"text messages must be JSON ({e.msg} at char {e.pos})") from e
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise StreamError(1007, 'expected a JSON object with a "type" field')
    if message["type"] == "eof":
        return None
    if message["type"] != "config":
        raise StreamError(1008, f"unknown message type {message['type']!r} (expected config or eof)")
    try:
        cfg = StreamConfigMessage.model_validate(message)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise StreamError(1007, f"invalid config: {detail}") from e
    if cfg.encoding not in ENCODINGS:
        raise StreamError(1003, f"unsupported encoding {cfg.encoding!r}; use one of {sorted(ENCODINGS)}")
    beam = cfg.beam_size or state.settings.stream_beam_size or state.settings.default_beam_size
    if beam > state.settings.max_beam_size:
        raise StreamError(1007, f"invalid config: beam_size must be at most {state.settings.max_beam_size}")
    return StreamOptions(sample_rate=cfg.sample_rate, encoding=cfg.encoding, beam_size=beam,
                         word_timestamps=cfg.word_timestamps)


async def _pump(ws: WebSocket, session: StreamSession) -> None:
    async for message in session.messages():
        await ws.send_json(message)


class Pace:
    """When a session must end for its pace: too slow a sender after the grace period, or too long a session."""

    def __init__(self, settings: Settings, session: StreamSession) -> None:
        self.session, self.started = session, time.monotonic()
        self.min_realtime, self.grace_s = settings.stream_min_realtime, settings.stream_rate_grace_s
        self.max_duration_s = settings.stream_max_duration_s

    def check(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.max_duration_s:
            raise StreamError(1008, f"the session is over its {self.max_duration_s:g} s wall-clock limit")
        owed = self.min_realtime * (elapsed - self.session.held_s - self.grace_s)
        if owed > 0 and self.session.audio_seconds < owed:
            raise StreamError(1008, f"too slow: {self.session.audio_seconds:.1f} s of audio in {elapsed:.0f} s; "
                                    f"send at least {self.min_realtime:g} s of audio per second")

    def next_check_s(self) -> float:
        return 1.0 if self.min_realtime > 0 else max(0.05, self.started + self.max_duration_s - time.monotonic())


async def _run(ws: WebSocket, session: StreamSession, state: ServiceState) -> int:
    """Serve one session until eof (returns 1000) or the client leaves (returns its close code)."""
    sender = asyncio.create_task(_pump(ws, session))
    idle, pace = state.settings.stream_idle_timeout_s, Pace(state.settings, session)
    receiving: asyncio.Future | None = None
    try:
        last_message = time.monotonic()
        while True:
            receiving = receiving or asyncio.ensure_future(ws.receive())
            wait_s = min(pace.next_check_s(), max(0.0, last_message + idle - time.monotonic()))
            done, _ = await asyncio.wait({receiving, sender}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # raises the StreamError that ended it
                if session.draining:  # every final is out; tell the client to reconnect elsewhere
                    await ws.close(1001, "the server is shutting down")
                    return 1001
                raise StreamError(1011, "internal error: the session stopped sending")
            if receiving not in done:
                if time.monotonic() - last_message >= idle:
                    raise StreamError(1001, f"no message for {idle:g} s")
                pace.check()
                continue
            message, receiving = receiving.result(), None
            if message["type"] == "websocket.disconnect":
                session.abort()
                return int(message.get("code", 1005))
            pace.check()
            if not await _take(message, session, state):  # eof
                await sender  # every final is out
                await ws.close(1000)
                return 1000
            last_message = time.monotonic()
    finally:
        if receiving is not None:
            receiving.cancel()
        if not sender.done():
            sender.cancel()
        if not session.finished:
            session.abort()


async def _take(message: dict, session: StreamSession, state: ServiceState) -> bool:
    """Apply one client message to the session; False once it was ``eof`` (the last finals are queued)."""
    if message.get("bytes") is not None:
        await session.feed(message["bytes"])  # waits while this session's finals are backed up
        return True
    text = message.get("text") or ""
    if len(text) > state.settings.stream_max_frame_bytes:
        raise StreamError(1009, "text message too large")
    options = parse_control(text, state)
    if options is None:
        await session.finish()
        return False
    await asyncio.to_thread(prepare_resampler, options.sample_rate, session.rate)  # the filter, off the loop
    session.configure(options)
    return True


async def _fail(ws: WebSocket, error: StreamError) -> None:
    with suppress(Exception):
        if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
            await ws.send_json({"type": "error", "message": error.message})
            await ws.close(error.code, error.message[:120])  # a close reason is at most 123 bytes


@router.websocket(ROUTE)
async def stream(ws: WebSocket) -> None:
    state: ServiceState = ws.app.state.service
    key = state.settings.api_key
    await ws.accept()
    code, counted = 1011, False
    try:
        if not token_ok(ws, key.get_secret_value() if key else None, allow_query=True):
            raise StreamError(1008, "missing or invalid API key")
        if not state.ready:
            raise StreamError(1013, "the model is not ready; retry shortly")
        if len(state.streams) >= state.settings.max_streams:
            raise StreamError(1013, f"{len(state.streams)} streams are open (limit {state.settings.max_streams}); "
                                    "retry later")
        session = StreamSession(state.engine, state.detector, limits_from(state),
                                state.settings.decoding(state.settings.stream_beam_size),
                                request_id=request_id.get(), on_partial_dropped=state.metrics.partials_dropped.inc)
        state.streams.add(session)
        counted = True
        state.metrics.active_streams.inc()
        code = await _run(ws, session, state)
        log.info("stream closed (%d) after %.1f s of audio", code, session.audio_seconds)
    except StreamError as e:
        code = e.code
        log.info("stream ended with %d: %s", e.code, e.message)
        await _fail(ws, e)
    except WebSocketDisconnect as e:
        code = e.code
    except Exception:
        log.exception("stream failed")
        await _fail(ws, StreamError(1011, "internal error"))
    finally:
        if counted:
            state.streams.discard(session)
            state.metrics.active_streams.dec()
        state.metrics.requests.labels(ROUTE, str(code)).inc()
