"""Auth, CORS, limits, back-pressure, disconnects and graceful shutdown, on servers with strict settings."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from app.client import stream_url
from tests.conftest import encode, exchange, wait_until

KEY = "s3cret-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def strict(launch):
    """Auth on, a queue of 2 that a 1.5 s batching wait keeps full, small upload and length limits."""
    with launch(api_key=KEY, queue_depth=2, max_batch_size=4, max_wait_ms=1500, idle_wait_ms=1500,
                max_upload_bytes=UPLOAD_LIMIT, max_audio_seconds=5, cors_origins=["https://app.example"]) as live:
        yield live


def raw_request(url: str, head: str, parts: list[bytes] = (), timeout: float = 10) -> tuple[int, bytes]:
    """Speak HTTP/1.1 by hand, so the test controls exactly how much of the body is ever sent."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.encode())
        for part in parts:
            s.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


# ---------------------------------------------------------------------------- auth and CORS


def test_every_route_but_health_needs_the_token(strict, speech) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.get(strict.url + path).status_code == 200
    for method, path in (("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/transcribe"),
                         ("POST", "/v1/audio/transcriptions")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.request(method, strict.url + path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(strict.url + "/v1/models", headers=AUTH).status_code == 200


def test_openai_client_with_and_without_the_key(strict, speech) -> None:
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(api_key=KEY, base_url=f"{strict.url}/v1", max_retries=0)
    assert good.models.list().data[0].id == "random-test-model"
    bad = openai.OpenAI(api_key="nope", base_url=f"{strict.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_websocket_auth(strict) -> None:
    async def attempt(url: str, headers: dict) -> tuple[list, int]:
        async with connect(url, additional_headers=headers, proxy=None) as ws:
            replies, code, _ = await exchange(ws, [json.dumps({"type": "eof"})])
            return replies, code

    replies, code = asyncio.run(attempt(stream_url(strict.url), {}))
    assert code == 1008 and replies[0]["type"] == "error" and "API key" in replies[0]["message"]
    assert asyncio.run(attempt(stream_url(strict.url), AUTH)) == ([], 1000)
    assert asyncio.run(attempt(stream_url(strict.url) + f"?access_token={KEY}", {})) == ([], 1000)


def test_cors_preflight(strict) -> None:
    r = httpx.options(strict.url + "/transcribe", headers={"Origin": "https://app.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.options(strict.url + "/transcribe", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------------------- size and length limits


def test_declared_oversize_upload_is_refused_before_the_body_is_sent(strict) -> None:
    head = (f"POST /transcribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: audio/wav\r\nContent-Length: {10 * UPLOAD_LIMIT}\r\n\r\n")
    status, data = raw_request(strict.url, head)  # not one byte of body sent
    assert status == 413 and b"limit" in data


def test_chunked_oversize_upload_is_cut_off_while_streaming_in(strict) -> None:
    head = (f"POST /transcribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"\0" * 65536
    parts = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (UPLOAD_LIMIT // len(chunk) + 1)
    status, data = raw_request(strict.url, head, parts)  # the body never ends, yet the answer comes
    assert status == 413 and b"limit" in data


def test_oversize_multipart_upload(strict) -> None:
    r = httpx.post(strict.url + "/transcribe", headers=AUTH, files={"file": ("a.wav", b"\0" * (UPLOAD_LIMIT + 1))})
    assert r.status_code == 413


def test_audio_over_the_length_limit(strict) -> None:
    r = httpx.post(strict.url + "/transcribe", headers=AUTH,
                   files={"file": ("a.wav", encode(np.zeros(6 * 16000, np.int16), 16000, "WAV"))})
    assert r.status_code == 413 and "limit is 5 s" in r.json()["detail"]


# ---------------------------------------------------------------------------- back-pressure and disconnects


def test_a_full_queue_answers_429_with_retry_after(strict, speech) -> None:
    """Depth 2, batches of 4 and a 1.5 s wait: two requests fill the queue; a third is refused, not queued."""
    wav = speech["hello"].wav
    results: list[httpx.Response] = []

    def send() -> None:
        results.append(httpx.post(strict.url + "/transcribe", headers=AUTH, files={"file": ("a.wav", wav)},
                                  timeout=60))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: strict.state.engine.depth == 2, timeout=10, interval=0.01)
    refused = httpx.post(strict.url + "/transcribe", headers=AUTH, files={"file": ("a.wav", wav)})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["detail"]
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200, 200]


def _multipart_stream_request(wav: bytes) -> tuple[str, str, bytes]:
    """``stream=true`` on the OpenAI route: its answer has begun before decoding ends."""
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()
    return "/v1/audio/transcriptions", f"multipart/form-data; boundary={boundary}", body


@pytest.mark.parametrize("request_kind", ["rest", "openai-stream"])
def test_a_client_that_disconnects_is_dropped_from_pending_work(strict, speech, request_kind: str) -> None:
    before = strict.metric("asr_cancelled_segments_total", AUTH)
    wav = speech["hello"].wav
    path, content_type, body = (("/transcribe", "audio/wav", wav) if request_kind == "rest"
                                else _multipart_stream_request(wav))
    u = urlparse(strict.url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        wait_until(lambda: strict.state.engine.depth == 1, timeout=10, interval=0.01)
    started = time.monotonic()
    wait_until(lambda: strict.state.engine.depth == 0, timeout=5, interval=0.01)
    assert time.monotonic() - started < 1.0  # withdrawn, not decoded when its 1.5 s batching wait ran out
    assert strict.metric("asr_cancelled_segments_total", AUTH) - before == 1


def test_graceful_shutdown_finishes_in_flight_work(launch, speech) -> None:
    results: list[httpx.Response] = []
    with launch(max_wait_ms=800, idle_wait_ms=800) as live:
        sender = threading.Thread(target=lambda: results.append(
            httpx.post(live.url + "/transcribe", files={"file": ("a.wav", speech["hello"].wav)}, timeout=60)))
        sender.start()
        wait_until(lambda: live.state.engine.depth == 1, timeout=10, interval=0.01)
        live.server.should_exit = True  # what SIGTERM does
        sender.join(60)
    assert results and results[0].status_code == 200
    assert live.state.phase == "stopping"


def test_a_broken_checkpoint_reports_not_ready_instead_of_dying(launch, checkpoint, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    with launch(expect_ready=False, weights=broken) as live:
        ready = httpx.get(live.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "checksum" in ready.json()["detail"]
        r = httpx.post(live.url + "/transcribe", content=b"x")
        assert r.status_code == 503 and "failed to load" in r.json()["detail"]
        assert httpx.get(live.url + "/healthz").status_code == 200


def test_shutdown_gives_open_streams_their_last_final_then_closes_1001(launch, speech) -> None:
    clip = speech["fox"]
    pcm = (np.clip(clip.audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def scenario(live) -> tuple[list[dict], int, str]:
        async with connect(stream_url(live.url), proxy=None) as ws:
            for i in range(0, len(pcm), 3200):
                await ws.send(pcm[i: i + 3200])
            while sum(s.audio_seconds for s in live.state.streams) < clip.seconds - 1e-3:
                await asyncio.sleep(0.01)  # the server has every sample; no eof is coming
            live.server.should_exit = True  # what SIGTERM does
            replies = [json.loads(m) async for m in ws]
            return replies, ws.close_code, ws.close_reason

    with launch(max_wait_ms=10) as live:
        replies, code, reason = asyncio.run(scenario(live))
        assert not live.state.streams
    finals = [m for m in replies if m["type"] == "final"]
    assert len(finals) == 1 and replies[-1] is finals[0], replies
    assert finals[0]["end"] >= clip.seconds - 0.3  # the speech up to the shutdown, not a fragment of it
    assert (code, reason) == (1001, "the server is shutting down")
