"""Abuse run: hostile uploads, streams and connections against a server process, with what each one cost it.

    python -m bench.abuse                    # every case at the default limits, then the slow runs
    python -m bench.abuse --quick            # the cases only (what the test suite runs, at small limits)

Each case reports the status (HTTP) or close code (WebSocket) the attacker got, how far the server's resident
memory rose above where it stood (peak minus start), the slowest ``/healthz`` answer while it ran, and whether
the next normal request still got its usual transcript. The slow runs: 300 connections dribbling their headers
(closed within the header timeout? file descriptors back to baseline?), a stream pushing speech 100x faster
than real time beside four upload clients (queue peak against ``ASR_QUEUE_DEPTH``, upload p95 against its
unloaded value), and 64 clients against a queue of 8. The model is the shipped ``weights/`` unless
``--weights`` names another; the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .common import emit, print_table
from .server import ROOT, ServerProcess

RATE = 16000
# Small limits make every case quick; the default run uses the server's own defaults instead.
QUICK_SETTINGS = {"max_audio_seconds": 5, "header_timeout_s": 1, "body_timeout_s": 1, "max_connections": 64,
                  "stream_rate_grace_s": 1, "stream_min_realtime": 0.5, "queue_depth": 4,
                  "stream_max_pending_finals": 1, "default_beam_size": 2, "log_level": "info"}
API_KEY = "abuse-test-key-0123"


# ---------------------------------------------------------------------------- hostile files


def encode(audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def noise(seconds: float, rate: int, channels: int = 1, level: float = 0.01) -> np.ndarray:
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return (level * np.random.default_rng(0).standard_normal(shape)).astype(np.float32)


def flac_declaring(total_samples: int, rate: int = 48000, channels: int = 8) -> bytes:
    """A one-second FLAC whose STREAMINFO claims ``total_samples`` frames (36 bits: 0 means 'unknown')."""
    data = bytearray(encode(noise(1.0, rate, channels), rate, "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | (total_samples & ((1 << 36) - 1))
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def silence_file(seconds: float, rate: int, channels: int, fmt: str, subtype: str | None = None) -> bytes:
    """Long, tiny files: digital silence compresses to almost nothing (written in blocks, to spare our memory)."""
    buf, block = io.BytesIO(), np.zeros((rate, channels), np.float32)  # small writes: big ones crash libvorbis
    with sf.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as f:
        for start in range(0, int(seconds * rate), len(block)):
            f.write(block[: int(seconds * rate) - start])
    return buf.getvalue()


def flac_unknown_length(seconds: float, rate: int = 48000, channels: int = 8) -> bytes:
    """Real audio of ``seconds`` whose header says nothing of its length."""
    data = bytearray(silence_file(seconds, rate, channels, "FLAC"))
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def wav_at(rate: int, seconds: float = 1.0) -> bytes:
    return encode(noise(seconds, rate), rate, "WAV", "PCM_16")


def wav_header_rate(rate: int, seconds: float = 1.0) -> bytes:
    """A WAV whose header names any rate at all (libsndfile refuses to write the absurd ones)."""
    data = bytearray(wav_at(16000, seconds))
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (2 * rate).to_bytes(4, "little")
    return bytes(data)


# ---------------------------------------------------------------------------- measuring one case


@dataclass
class Outcome:
    case: str
    status: int | None  # HTTP status or WebSocket close code the attacker got
    rss_rise_mb: float  # the server's peak resident memory during the case, minus where it started
    healthz_max_ms: float  # slowest /healthz answer while the case ran
    next_ok: bool  # the next normal request got the same transcript as before the case
    seconds: float
    detail: dict = field(default_factory=dict)


@contextmanager
def healthz_watch(url: str, every_s: float = 0.02) -> Iterator[list[float]]:
    """Polls ``/healthz`` on its own connection while the block runs; yields the list of latencies (ms)."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    http.get(f"{url}/healthz")
                except httpx.HTTPError:
                    pass  # counted as the time it took to fail
                latencies.append((time.perf_counter() - t) * 1000)
                stop.wait(every_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


class Attacker:
    """Runs cases against one server and checks it is still itself after each."""

    def __init__(self, server: ServerProcess, probe: bytes, api_key: str | None = None) -> None:
        self.server, self.url, self.probe = server, server.url, probe
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.api_key = api_key
        self.reference = self.transcribe(probe)

    def transcribe(self, audio: bytes, client: httpx.Client | None = None) -> str | None:
        post = client.post if client else httpx.post
        r = post(f"{self.url}/transcribe", files={"file": ("probe.wav", audio)}, headers=self.headers, timeout=120)
        return r.json()["text"] if r.status_code == 200 else None

    def run(self, case: str, attack: Callable[[], tuple[int | None, dict] | int | None]) -> Outcome:
        baseline = self.server.rss_mb()
        self.server.reset_peak_rss()
        started = time.perf_counter()
        with healthz_watch(self.url) as latencies:
            result = attack()
        seconds = time.perf_counter() - started
        status, detail = result if isinstance(result, tuple) else (result, {})
        rise = self.server.peak_rss_mb() - baseline
        return Outcome(case, status, round(rise, 1), round(max(latencies, default=0.0), 1),
                       self.transcribe(self.probe) == self.reference, round(seconds, 2), detail)

    # ------------------------------------------------------------------ uploads

    def upload(self, data: bytes, name: str = "audio") -> int:
        r = httpx.post(f"{self.url}/transcribe", files={"file": (name, data)}, headers=self.headers, timeout=300)
        return r.status_code

    def upload_then_reuse(self, data: bytes) -> tuple[int, dict]:
        """The upload, then a normal request on the same keep-alive connection."""
        with httpx.Client(timeout=300, headers=self.headers) as http:
            status = http.post(f"{self.url}/transcribe", files={"file": ("a.flac", data)}).status_code
            again = self.transcribe(self.probe, http)
        return status, {"same_connection_ok": again == self.reference}

    # ------------------------------------------------------------------ streams

    def ws_url(self, with_token_in_query: bool = False) -> str:
        url = self.url.replace("http://", "ws://") + "/transcribe/stream"
        return f"{url}?access_token={self.api_key}" if with_token_in_query and self.api_key else url

    def stream(self, messages: list[str | bytes], query_token: bool = False, pause_s: float = 0.0,
               timeout_s: float = 120.0) -> tuple[int | None, dict]:
        """Send ``messages`` (pausing between them), read every reply; returns the close code and the replies."""
        headers = {} if query_token else self.headers
        replies: list[dict] = []
        with connect(self.ws_url(query_token), additional_headers=headers, open_timeout=30,
                     close_timeout=timeout_s, max_size=None) as ws:
            reader = threading.Thread(target=_read_all, args=(ws, replies, timeout_s), daemon=True)
            reader.start()
            try:
                for m in messages:
                    ws.send(m)
                    if pause_s:
                        time.sleep(pause_s)
            except ConnectionClosed:
                pass
            reader.join(timeout_s)
            return ws.close_code, {"replies": [r.get("type") for r in replies],
                                   "errors": [r["message"] for r in replies if r.get("type") == "error"]}

    def slow_stream(self, every_s: float, limit_s: float) -> tuple[int | None, dict]:
        """Two bytes every ``every_s`` until the server closes the stream (or ``limit_s`` passes)."""
        started = time.monotonic()
        with connect(self.ws_url(), additional_headers=self.headers, open_timeout=30) as ws:
            try:
                while time.monotonic() - started < limit_s:
                    ws.send(b"\x00\x00")
                    try:
                        ws.recv(timeout=every_s)
                    except TimeoutError:
                        pass
            except ConnectionClosed:
                pass
            return ws.close_code, {"closed_after_s": round(time.monotonic() - started, 1)}

    # ------------------------------------------------------------------ raw connections

    def dribble_headers(self, connections: int, every_s: float, limit_s: float) -> tuple[int | None, dict]:
        """``connections`` sockets sending a request's headers a byte at a time; how long until each is closed."""
        baseline = self.server.open_fds()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        started = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", self.server.port), timeout=5) for _ in range(connections)]
        time.sleep(0.2)  # let the server accept them all
        peak_fds = self.server.open_fds()
        open_ = set(range(connections))
        closed_at: dict[int, float] = {}
        for s in socks:
            s.setblocking(False)
        i = 0
        while open_ and time.monotonic() - started < limit_s:
            for k in list(open_):
                try:
                    socks[k].send(head[i: i + 1])
                    if socks[k].recv(4096) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    closed_at[k] = time.monotonic() - started
                    open_.discard(k)
                    continue
                closed_at[k] = time.monotonic() - started  # the server answered (408) and will close
                open_.discard(k)
            i += 1
            time.sleep(every_s)
        for s in socks:
            s.close()
        time.sleep(0.5)
        return None, {"connections": connections, "still_open": len(open_),
                      "closed_by_s": round(max(closed_at.values(), default=0.0), 2),
                      "fds_baseline": baseline, "fds_peak": peak_fds, "fds_after": self.server.open_fds()}

    def raw(self, request: bytes, wait_s: float) -> tuple[int | None, dict]:
        """Send ``request`` as it is; the status of whatever the server answers within ``wait_s``."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=wait_s) as s:
            s.sendall(request)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
        return status, {"answered_after_s": round(time.monotonic() - started, 2)}

    def connection_cap(self, cap: int) -> tuple[int | None, dict]:
        """Hold ``cap`` idle connections; the next one must be refused at once."""
        held = [socket.create_connection(("127.0.0.1", self.server.port), timeout=5) for _ in range(cap)]
        try:
            time.sleep(0.1)
            status, detail = self.raw(b"", wait_s=5)  # refused on arrival, before it says anything
        finally:
            for s in held:
                s.close()
        return status, detail


def _read_all(ws, replies: list[dict], timeout_s: float) -> None:
    try:
        while True:
            replies.append(json.loads(ws.recv(timeout=timeout_s)))
    except (ConnectionClosed, TimeoutError):
        pass


# ---------------------------------------------------------------------------- the cases


def upload_cases(a: Attacker, limit_s: float) -> list[Outcome]:
    """Every hostile upload of the abuse report, scaled to the server's length limit ``limit_s``."""
    over = 2 * limit_s
    return [
        a.run("flac_declares_over_limit_8ch", lambda: a.upload(flac_declaring(int(over * 48000)))),
        a.run("flac_declares_2^36-1_samples", lambda: a.upload_then_reuse(flac_declaring(2**36 - 1))),
        a.run("flac_hides_its_length", lambda: a.upload(flac_unknown_length(over))),
        a.run("ogg_vorbis_over_limit", lambda: a.upload(silence_file(over, 8000, 2, "OGG", "VORBIS"))),
        a.run("mp3_over_limit", lambda: a.upload(silence_file(over, 16000, 1, "MP3"))),
        a.run("largest_legit_wav", lambda: a.upload(encode(noise(min(0.9 * limit_s, 140), 44100, 2), 44100, "WAV",
                                                           "PCM_16"))),
        a.run("mp3_truncated", lambda: a.upload(encode(noise(3.0, 16000), 16000, "MP3")[:2000])),
        a.run("wav_8001_hz", lambda: a.upload(wav_at(8001))),
        a.run("wav_48001_hz", lambda: a.upload(wav_at(48001))),
        a.run("wav_1_hz", lambda: a.upload(wav_header_rate(1))),
        a.run("wav_4000000_hz", lambda: a.upload(wav_header_rate(4_000_000))),
        a.run("garbage", lambda: a.upload(np.random.default_rng(1).bytes(100_000))),
    ]


def stream_cases(a: Attacker, grace_s: float) -> list[Outcome]:
    one_second = (noise(1.0, 8001) * 32767).astype("<i2").tobytes()
    return [
        a.run("ws_rate_8001", lambda: a.stream([json.dumps({"type": "config", "sample_rate": 8001}), one_second,
                                               json.dumps({"type": "eof"})])),
        a.run("ws_encoding_of_wrong_type", lambda: a.stream([json.dumps({"type": "config",
                                                                         "encoding": ["f32le"]})])),
        a.run("ws_config_key_forging_a_log_line", lambda: a.stream([json.dumps(
            {"type": "config", "x\n2099-01-01 00:00:00,000 INFO app.access forged": 1})])),
        a.run("ws_too_slow", lambda: a.slow_stream(every_s=0.5, limit_s=grace_s + 20)),
    ]


def log_cases(a: Attacker) -> list[Outcome]:
    """Secrets and forged lines: the key in a stream's query string, CR/LF in a path."""
    return [
        a.run("ws_token_in_query", lambda: a.stream([json.dumps({"type": "eof"})], query_token=True)),
        a.run("path_with_crlf", lambda: a.raw(b"GET /x%0d%0a2099-01-01%2000:00:00,000%20INFO%20app.access%20GET%20"
                                              b"/forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5)),
        a.run("docs_without_key", lambda: httpx.get(f"{a.url}/openapi.json").status_code),
    ]


def log_is_clean(log: str, secret: str) -> dict:
    """No secret in any line, and no line that starts like one of our records but was written by a client."""
    return {"key_in_log": secret in log,
            "forged_lines": sum(line.startswith("2099-") for line in log.splitlines()),
            "redacted_tokens": log.count("access_token=***")}


def connection_cases(a: Attacker, header_timeout_s: float, body_timeout_s: float, cap: int,
                     dribblers: int) -> list[Outcome]:
    auth = f"Authorization: Bearer {a.api_key}\r\n".encode() if a.api_key else b""
    chunked = (b"POST /transcribe HTTP/1.1\r\nHost: x\r\n" + auth +
               b"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc")
    declared = (b"POST /transcribe HTTP/1.1\r\nHost: x\r\n" + auth +
                b"Content-Type: audio/wav\r\nContent-Length: 100000\r\n\r\nRIFF")
    return [
        a.run("dribbled_headers", lambda: a.dribble_headers(dribblers, every_s=0.2, limit_s=header_timeout_s + 10)),
        a.run("chunked_body_never_sent", lambda: a.raw(chunked, wait_s=body_timeout_s + 10)),
        a.run("declared_body_never_sent", lambda: a.raw(declared, wait_s=body_timeout_s + 10)),
        a.run("connection_cap", lambda: a.connection_cap(cap)),
    ]


# ---------------------------------------------------------------------------- the slow runs


def speech_wav(text: str, out: Path) -> bytes:
    import subprocess

    path = out / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path.read_bytes()


def pcm16(wav: bytes) -> np.ndarray:
    from model.audio import decode_audio

    return decode_audio(wav, RATE)[0]


async def _upload_latencies(url: str, wav: bytes, clients: int, seconds: float, headers: dict) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            t = time.monotonic()
            r = await http.post(f"{url}/transcribe", files={"file": ("s.wav", wav)})
            if r.status_code == 200:
                latencies.append(time.monotonic() - t)

    async with httpx.AsyncClient(timeout=120, headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies


def p95(values: list[float]) -> float | None:
    return round(sorted(values)[int(0.95 * (len(values) - 1))] * 1000, 1) if values else None


def fast_stream_beside_uploads(a: Attacker, speech: np.ndarray, seconds: float, speedup: float = 100.0) -> dict:
    """Upload p95 alone, then with a stream pushing speech ``speedup`` x faster than real time."""
    wav = encode(speech, RATE, "WAV", "PCM_16")
    alone = asyncio.run(_upload_latencies(a.url, wav, 4, seconds, a.headers))
    gap = np.zeros(int(0.8 * RATE), np.float32)
    talk = np.concatenate([np.concatenate([speech, gap])] * max(1, int(seconds * speedup / (len(speech) / RATE + 0.8))))
    pcm = (np.clip(talk, -1, 1) * 32767).astype("<i2").tobytes()
    frame = RATE  # half a second of 16-bit audio per frame
    stop = threading.Event()
    result: dict = {}

    def push() -> None:
        started = time.monotonic()
        frames = [pcm[i: i + frame] for i in range(0, len(pcm), frame)]
        sent = 0.0
        # No client keepalive: while the server holds the stream back it does not read, pings included.
        with connect(a.ws_url(), additional_headers=a.headers, max_size=None, ping_interval=None) as ws:
            replies: list[dict] = []
            reader = threading.Thread(target=_read_all, args=(ws, replies, 300), daemon=True)
            reader.start()
            try:
                for f in frames:
                    if stop.is_set():
                        break
                    ws.send(f)
                    sent += len(f) / 2 / RATE
                    ahead = started + sent / speedup - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                ws.send(json.dumps({"type": "eof"}))
            except ConnectionClosed:
                pass
            reader.join(300)
            result.update(close_code=ws.close_code, finals=sum(r.get("type") == "final" for r in replies),
                          audio_sent_s=round(sent, 1), push_wall_s=round(time.monotonic() - started, 1))

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    loaded = asyncio.run(_upload_latencies(a.url, wav, 4, seconds, a.headers))
    stop.set()
    pusher.join(600)
    peak = _metric(a.url, "asr_queue_depth_peak", a.headers)
    return {"upload_p95_alone_ms": p95(alone), "upload_p95_with_stream_ms": p95(loaded),
            "queue_peak": peak, **{f"stream_{k}": v for k, v in result.items()}}


def overload(a: Attacker, wav: bytes, clients: int, seconds: float) -> dict:
    """``clients`` upload loops against the server: how many were turned away, and how the rest fared."""
    statuses: list[int] = []
    accepted: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                r = await http.post(f"{a.url}/transcribe", files={"file": ("s.wav", wav)})
            except httpx.HTTPError:
                statuses.append(0)
                continue
            statuses.append(r.status_code)
            if r.status_code == 200:
                accepted.append(time.monotonic() - t)
            elif r.status_code == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 10)

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=120, headers=a.headers, limits=limits) as http:
            await asyncio.gather(*(client(http) for _ in range(clients)))

    asyncio.run(run())
    return {"clients": clients, "ok": statuses.count(200), "busy_429": statuses.count(429),
            "other": len(statuses) - statuses.count(200) - statuses.count(429), "accepted_p95_ms": p95(accepted)}


def _metric(url: str, name: str, headers: dict) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--quick", action="store_true", help="small limits and the cases only (no slow runs)")
    ap.add_argument("--dribblers", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each slow run's measured window")
    args = ap.parse_args()

    settings = dict(QUICK_SETTINGS) if args.quick else {"log_level": "info", "header_timeout_s": 5,
                                                         "body_timeout_s": 10, "stream_rate_grace_s": 5,
                                                         "max_connections": 256}
    settings["api_key"] = API_KEY
    limit_s = float(settings.get("max_audio_seconds", 600.0))
    header_s, body_s = float(settings["header_timeout_s"]), float(settings["body_timeout_s"])
    cap = int(settings.get("max_connections", 512))
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        probe = speech_wav("the quick brown fox jumps over the lazy dog", scratch)
        with ServerProcess(args.weights, scratch / "server.log", settings) as server:
            a = Attacker(server, probe, API_KEY)
            rows = [*upload_cases(a, limit_s), *stream_cases(a, float(settings["stream_rate_grace_s"])),
                    *log_cases(a),
                    *connection_cases(a, header_s, body_s, cap, min(args.dribblers, cap - 10))]
            figures["log"] = log_is_clean(server.log_text(), API_KEY)
        print_table([asdict(r) | {"detail": json.dumps(r.detail)[:80]} for r in rows],
                    ["case", "status", "rss_rise_mb", "healthz_max_ms", "next_ok", "seconds", "detail"])
        figures |= {"cases": len(rows), "max_rss_rise_mb": max(r.rss_rise_mb for r in rows),
                    "max_healthz_ms": max(r.healthz_max_ms for r in rows),
                    "all_next_ok": all(r.next_ok for r in rows),
                    "statuses": {r.case: r.status for r in rows},
                    "dribbled": next(r.detail for r in rows if r.case == "dribbled_headers")}
        if not args.quick:
            speech = pcm16(probe)
            with ServerProcess(args.weights, scratch / "stream.log", {"queue_depth": 8}) as server:
                figures["fast_stream"] = fast_stream_beside_uploads(Attacker(server, probe), speech, args.seconds)
            with ServerProcess(args.weights, scratch / "overload.log", {"queue_depth": 8}) as server:
                figures["overload"] = overload(Attacker(server, probe), probe, 64, args.seconds)
            print(json.dumps({k: figures[k] for k in ("fast_stream", "overload")}, indent=1))
    emit(figures)


if __name__ == "__main__":
    main()
