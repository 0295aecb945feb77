"""``/transcribe/stream``: the WebSocket side of a :class:`~app.stream_session.StreamSession`.

The route only moves bytes and JSON: text messages are parsed here (``config``, ``eof``), binary frames go to
the session, and the session's messages go back out in order. Any protocol breach becomes
``{"type": "error", "message": ...}`` followed by a close with a code that says what kind of breach it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import suppress

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

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
                        partial_beam_size=s.stream_partial_beam_size, vad_threshold=s.vad_threshold,
                        max_segment_s=state.worker.max_segment_seconds)


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
    if message.get("encoding", "pcm_s16le") not in ENCODINGS:
        raise StreamError(1003, f"unsupported encoding {message.get('encoding')!r}; use one of {sorted(ENCODINGS)}")
    try:
        cfg = StreamConfigMessage.model_validate(message)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise StreamError(1007, f"invalid config: {detail}") from e
    beam = cfg.beam_size or state.settings.default_beam_size
    if beam > state.settings.max_beam_size:
        raise StreamError(1007, f"invalid config: beam_size must be at most {state.settings.max_beam_size}")
    return StreamOptions(sample_rate=cfg.sample_rate, encoding=cfg.encoding, beam_size=beam,
                         word_timestamps=cfg.word_timestamps)


async def _pump(ws: WebSocket, session: StreamSession) -> None:
    async for message in session.messages():
        await ws.send_json(message)


async def _run(ws: WebSocket, session: StreamSession, state: ServiceState) -> int:
    """Serve one session until eof (returns 1000) or the client leaves (returns its close code)."""
    sender = asyncio.create_task(_pump(ws, session))
    idle = state.settings.stream_idle_timeout_s
    try:
        while True:
            receiving = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receiving, sender}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                receiving.cancel()
                sender.result()  # raises the StreamError that ended it
                if session.draining:  # every final is out; tell the client to reconnect elsewhere
                    await ws.close(1001, "the server is shutting down")
                    return 1001
                raise StreamError(1011, "internal error: the session stopped sending")
            if receiving not in done:
                receiving.cancel()
                raise StreamError(1001, f"no message for {idle:g} s")
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                session.abort()
                return int(message.get("code", 1005))
            if message.get("bytes") is not None:
                session.feed(message["bytes"])
                continue
            text = message.get("text") or ""
            if len(text) > state.settings.stream_max_frame_bytes:
                raise StreamError(1009, "text message too large")
            options = parse_control(text, state)
            if options is not None:
                session.configure(options)
                continue
            session.finish()
            await sender  # every final is out
            await ws.close(1000)
            return 1000
    finally:
        if not sender.done():
            sender.cancel()
        if not session.finished:
            session.abort()


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
        session = StreamSession(state.engine, state.detector, limits_from(state), state.settings.decoding(),
                                request_id=request_id.get())
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
