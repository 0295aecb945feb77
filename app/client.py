"""A small client for the service: REST upload with httpx, live streaming with the ``websockets`` package."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

from model.audio import decode_audio

from .pcm import G711_SUBTYPES

TELEPHONE_RATE = 8000  # G.711's sample rate


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def transcribe_file(url: str, path: str | Path, *, api_key: str | None = None, beam_size: int | None = None,
                    timeout: float = 300.0) -> dict:
    """POST the file to ``/transcribe``; returns the JSON response (raises on an HTTP error status)."""
    params = {"beam_size": beam_size} if beam_size else {}
    with open(path, "rb") as f:
        response = httpx.post(f"{url.rstrip('/')}/transcribe", files={"file": (Path(path).name, f)}, params=params,
                              headers=_headers(api_key), timeout=timeout)
    if response.is_error:
        raise RuntimeError(f"{response.status_code}: {response.text}")
    return response.json()


def stream_url(url: str) -> str:
    base = url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http):]
    return base + "/transcribe/stream"


def pcm_chunks(audio: np.ndarray, rate: int, chunk_ms: float) -> list[bytes]:
    """16-bit little-endian PCM in chunks of ``chunk_ms``."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    step = max(1, int(rate * chunk_ms / 1000))
    return [pcm[i: i + step].tobytes() for i in range(0, len(pcm), step)]


def g711_bytes(audio: np.ndarray, rate: int, encoding: str) -> bytes:
    """``audio`` as a telephone gateway sends it: resampled to 8 kHz, 8-bit G.711 (``mulaw`` or ``alaw``, one byte
    a sample)."""
    import io

    import soundfile as sf

    from model.resample import resample

    buf = io.BytesIO()
    sf.write(buf, resample(audio, rate, TELEPHONE_RATE), TELEPHONE_RATE, format="RAW",
             subtype=G711_SUBTYPES[encoding])
    return buf.getvalue()


def g711_chunks(audio: np.ndarray, rate: int, encoding: str, chunk_ms: float) -> list[bytes]:
    """:func:`g711_bytes` in chunks of ``chunk_ms``, as a stream sends them."""
    data, step = g711_bytes(audio, rate, encoding), max(1, int(TELEPHONE_RATE * chunk_ms / 1000))
    return [data[i: i + step] for i in range(0, len(data), step)]


async def stream_audio(url: str, audio: np.ndarray, rate: int = 16000, *, api_key: str | None = None,
                       chunk_ms: float = 100.0, realtime: bool = False, beam_size: int | None = None,
                       on_message: Callable[[dict], None] | None = None) -> list[dict]:
    """Stream ``audio`` in ``chunk_ms`` chunks (paced like a microphone when ``realtime``), send eof, and
    return every message the server sent until it closed the connection."""
    received: list[dict] = []
    config = {"type": "config", "sample_rate": rate, "encoding": "pcm_s16le"}
    if beam_size:
        config["beam_size"] = beam_size
    async with connect(stream_url(url), additional_headers=_headers(api_key), proxy=None,
                       max_size=None) as ws:

        async def listen() -> None:
            async for raw in ws:
                message = json.loads(raw)
                received.append(message)
                if on_message:
                    on_message(message)

        listener = asyncio.create_task(listen())
        await ws.send(json.dumps(config))
        for chunk in pcm_chunks(audio, rate, chunk_ms):
            await ws.send(chunk)
            await asyncio.sleep(chunk_ms / 1000 if realtime else 0)
        await ws.send(json.dumps({"type": "eof"}))
        await listener
    return received


def stream_file(url: str, path: str | Path, **kwargs) -> list[dict]:
    audio, _ = decode_audio(Path(path), target_rate=16000)
    return asyncio.run(stream_audio(url, audio, 16000, **kwargs))
