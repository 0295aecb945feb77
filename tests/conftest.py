"""Service fixtures: a tiny random checkpoint, real speech from espeak-ng, and real uvicorn servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed

SENTENCES = {
    "hello": "hello world",
    "fox": "the quick brown fox",
    "weather": "what a lovely day",
}


@dataclass
class Clip:
    """One utterance: the WAV espeak-ng wrote (22.05 kHz) and the same audio as float32 at 16 kHz."""

    wav: bytes
    audio: np.ndarray  # 16 kHz mono float32
    rate: int = 16000

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.rate


def encode(audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.testing import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    from model.audio import decode_audio

    out = tmp_path_factory.mktemp("speech")
    clips = {}
    for name, text in SENTENCES.items():
        path = out / f"{name}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        wav = path.read_bytes()
        clips[name] = Clip(wav, decode_audio(wav, 16000)[0])
    return clips


@dataclass
class LiveServer:
    url: str
    app: object
    server: object

    @property
    def state(self):  # the app's ServiceState, for white-box checks
        return self.app.state.service

    def metric(self, name: str, headers: dict | None = None) -> float:
        """Sum of every sample of one metric (all label sets)."""
        text = httpx.get(f"{self.url}/metrics", headers=headers or {}).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


async def exchange(ws, messages: list) -> tuple[list[dict], int, str]:
    """Read while sending, so replies to an early error are not lost when later sends fail."""
    replies: list[dict] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                replies.append(json.loads(raw))

    reader = asyncio.create_task(read())
    with contextlib.suppress(ConnectionClosed):
        for m in messages:
            await ws.send(m)
    await reader
    await ws.wait_closed()
    return replies, ws.close_code, ws.close_reason


@pytest.fixture(scope="session")
def launch(checkpoint: Path):
    """``with launch(**settings) as live:`` runs a real uvicorn server in a thread on a free loopback port."""
    from app.config import Settings
    from app.main import create_app, make_server

    @contextmanager
    def _launch(expect_ready: bool = True, **overrides) -> Iterator[LiveServer]:
        settings = Settings(**({"weights": checkpoint, "default_beam_size": 2, "log_level": "warning"} | overrides))
        app = create_app(settings)
        server = make_server(app, host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started or not thread.is_alive())
            assert server.started, "uvicorn did not start"
            port = server.servers[0].sockets[0].getsockname()[1]
            live = LiveServer(f"http://127.0.0.1:{port}", app, server)
            wait_until(lambda: app.state.service.phase != "loading", timeout=120)
            assert app.state.service.ready or not expect_ready, app.state.service.error
            yield live
        finally:
            server.should_exit = True
            thread.join(30)

    return _launch


@pytest.fixture(scope="session")
def server(launch) -> Iterator[LiveServer]:
    """The default server shared by the REST, OpenAI and streaming tests (auth off, generous limits)."""
    with launch(max_wait_ms=30) as live:
        yield live
