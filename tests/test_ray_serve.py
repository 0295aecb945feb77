"""``speech-transformer serve --ray``: real Ray, real Serve replicas of the shipped model, behind Ray's proxy.

One deployment of two replicas serves the whole module (start-up is most of its time). The replica-kill test runs
last because it changes which replicas exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.client import stream_audio
from bench.server import ROOT, ServerProcess
from model.audio import decode_audio
from tests.conftest import wait_until
from tests.golden import FIXTURES, GOLDEN

pytest.importorskip("ray.serve", reason="the Ray extra is not installed (pip install '.[ray]')")

REPLICA_PROCESS = "ServeReplica:asr:SpeechReplica"  # the process title Ray gives each replica
EXPECTED = {name: r["text"] for name, r in json.loads(GOLDEN.read_text())["default"].items()}


def replica_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", REPLICA_PROCESS], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    with ServerProcess(ROOT / "weights", log, ray_replicas=2, ready_timeout_s=240) as server:
        yield server.url
    assert not replica_pids(), "replicas outlived the server"


async def uploads(url: str, names: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(name: str) -> httpx.Response:
            return await http.post(f"{url}/transcribe", files={"file": (name, (FIXTURES / name).read_bytes())})

        return await asyncio.gather(*(one(n) for n in names))


def test_two_replicas_share_sixteen_concurrent_uploads(ray_url: str) -> None:
    names = [sorted(EXPECTED)[i % len(EXPECTED)] for i in range(16)]
    responses = asyncio.run(uploads(ray_url, names))
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["text"] for r in responses] == [EXPECTED[n] for n in names]
    assert len({r.headers["x-replica"] for r in responses}) == 2
    assert all(len(r.headers.get_list("x-request-id")) == 1 for r in responses)  # the proxy's, not twice
    ready = httpx.get(f"{ray_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_openai_route_and_metrics_through_the_proxy(ray_url: str) -> None:
    name = sorted(EXPECTED)[0]
    r = httpx.post(f"{ray_url}/v1/audio/transcriptions", data={"model": "speech-transformer"},
                   files={"file": (name, (FIXTURES / name).read_bytes())}, timeout=120)
    assert r.status_code == 200 and r.json()["text"] == EXPECTED[name]
    assert "asr_batch_size" in httpx.get(f"{ray_url}/metrics", timeout=10).text


def test_a_websocket_stream_through_the_proxy_gets_partials_and_its_final(ray_url: str) -> None:
    name = "test_seen-000124.wav"
    audio = decode_audio((FIXTURES / name).read_bytes(), 16000)[0]
    audio = np.concatenate([audio, np.zeros(8000, np.float32)])
    messages = asyncio.run(stream_audio(ray_url, audio, 16000, chunk_ms=100, realtime=True))
    kinds = [m["type"] for m in messages]
    assert "partial" in kinds
    finals = [m["text"] for m in messages if m["type"] == "final"]
    assert finals == [EXPECTED[name]]


def test_service_survives_a_killed_replica(ray_url: str) -> None:
    """Clients keep uploading while one replica's process is SIGKILLed: only requests in flight on it may fail,
    and Serve starts a replacement within 60 s."""
    before = replica_pids()
    assert len(before) == 2
    name = sorted(EXPECTED)[1]
    outcomes: list[tuple[float, float, int]] = []  # (sent, answered, status or 0 for a transport error)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = http.post(f"{ray_url}/transcribe",
                                       files={"file": (name, (FIXTURES / name).read_bytes())}).status_code
                except httpx.HTTPError:
                    status = 0
                outcomes.append((sent, time.monotonic(), status))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(3)
    victim = before[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len([p for p in replica_pids() if p != victim]) == 2, timeout=60, interval=0.5)
    replaced_s = time.monotonic() - killed_at
    wait_until(lambda: httpx.get(f"{ray_url}/readyz", timeout=10).status_code == 200, timeout=60, interval=0.5)
    time.sleep(5)
    stop.set()
    for t in clients:
        t.join(120)
    failed = [(sent, answered, status) for sent, answered, status in outcomes if status != 200]
    after = [o for o in outcomes if o[0] > killed_at]
    print(f"replica killed: {len(failed)} of {len(outcomes)} requests failed, replacement up in {replaced_s:.1f} s")
    assert all(sent <= killed_at for sent, _, _ in failed), failed  # only those already in flight
    assert len(failed) <= 4  # at most every client's request was on the victim
    assert after and all(status == 200 for _, _, status in after)
    assert replaced_s <= 60
