"""Streaming latency: N concurrent real-time WebSocket streams of test clips against one server.

    python -m bench.stream                                   # starts its own server; 1 stream, then 16
    python -m bench.stream --set stream_partial_interval_ms=500
    python -m bench.stream --url http://host:8000            # measures a running server
    python -m bench.stream --encoding mulaw --streams 16     # the streams as 8 kHz G.711 from a telephone line

Each stream plays clip A, ``--gap-s`` of digital silence, clip B, then sends ``eof`` right after B's last chunk,
in 100 ms chunks paced like a microphone (each chunk waits for its due time from the stream's start on a
monotonic clock, so sleeps do not accumulate drift). Streams start at random (seeded) moments within the first
second and take their clip pairs round-robin from the clip list. A stream normally yields two finals: one closed
mid-stream by the server's endpoint silence, one after ``eof``.

Latencies, all from the client's monotonic clock:

* mid-stream final: its receive time minus the time the client sent the chunk holding stream position
  ``final.end - PAD + ENDPOINT``, the earliest audio that lets the server close the segment (the endpointer ends a
  segment PAD = 5 frames of 32 ms after the last speech and closes it after ENDPOINT of non-speech: the server's
  ``stream_endpoint_silence_ms``, default 500, in whole 32 ms frames), capped at the ``eof`` send time;
* final after eof: the last final of a stream, received after ``eof`` was sent: its receive time minus the ``eof``
  send time;
* partial interval: the time between consecutive partials of one segment of one stream.

``final_latency_*`` pool both kinds of final. Accuracy, in percent: ``wer_finals`` scores each stream's finals,
joined with spaces, against the references "A B"; ``wer_rest`` scores ``/transcribe`` of the same audio (A, gap,
B as one WAV upload, done before the streams, one at a time); with ``--encoding mulaw`` or ``alaw`` the streams
carry the audio resampled to 8 kHz and companded, the upload stays 16 kHz PCM, so the gap is the telephone line's
cost. During the largest run one ``/transcribe`` upload
every 2 s checks that uploads are still served (``uploads_ok_during``). A stream counts as an error when it got an
``error`` message, a close code other than 1000, or a failed connection; its finals count towards the WER but not
the latencies. The last line is one JSON object; its top-level figures are the largest run's (``errors``: every
run's), ``runs`` holds each run's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jiwer
import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from app.client import TELEPHONE_RATE, g711_chunks, pcm_chunks, stream_url
from app.pcm import G711_SUBTYPES
from model.audio import decode_audio

from .common import emit, print_table
from .server import ROOT, ServerProcess

RATE = 16000
CHUNK_MS = 100.0
FRAME_S = 0.032  # the endpointer's VAD frame
PAD_S = 5 * FRAME_S  # the endpointer's padding after the last speech (EndpointConfig.pad_frames)
DEFAULT_ENDPOINT_MS = 500.0  # ASR_STREAM_ENDPOINT_SILENCE_MS's default
UPLOAD_EVERY_S = 2.0
COLUMNS = ["streams", "finals", "errors", "final_latency_p50_ms", "final_latency_p95_ms", "midstream_latency_p50_ms",
           "eof_latency_p50_ms", "partial_interval_p50_ms", "wer_finals", "wer_rest", "uploads_ok_during"]


@dataclass
class Clip:
    audio: np.ndarray  # 16 kHz mono float32
    text: str


@dataclass
class StreamResult:
    """What one stream saw, in monotonic seconds: chunk send times, the eof send time, and every message."""

    pair: tuple[int, int]
    sent_at: list[float] = field(default_factory=list)
    eof_at: float = math.inf
    messages: list[tuple[float, dict]] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------------------------- clips and audio

def default_manifest() -> Path:
    unseen = ROOT / "data" / "corpus" / "test_unseen.jsonl"
    return unseen if unseen.is_file() else ROOT / "tests" / "fixtures" / "clips.jsonl"


def resolve_audio(manifest: Path, audio: str) -> Path:
    """Manifests name audio relative to their own folder (the fixtures, the corpus) or to the working directory."""
    beside = manifest.parent / audio
    return beside if beside.is_file() else Path(audio)


def load_clips(manifest: Path, count: int) -> list[Clip]:
    """The first ``count`` rows of 1.5-6 s (when the manifest records durations): long enough to endpoint, short
    enough that a stream stays well under a minute."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "duration" not in r or 1.5 <= r["duration"] <= 6.0][:count]
    return [Clip(decode_audio(resolve_audio(manifest, r["audio"]), RATE)[0], r["text"].lower()) for r in rows]


def clip_pairs(clip_count: int, streams: int) -> list[tuple[int, int]]:
    """Stream i plays clips 2i and 2i+1, wrapping round the list."""
    return [((2 * i) % clip_count, (2 * i + 1) % clip_count) for i in range(streams)]


def pair_audio(clips: list[Clip], pair: tuple[int, int], gap_s: float) -> np.ndarray:
    a, b = clips[pair[0]].audio, clips[pair[1]].audio
    return np.concatenate([a, np.zeros(int(gap_s * RATE), np.float32), b])


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wer_percent(refs: list[str], hyps: list[str]) -> float:
    return round(100 * jiwer.wer(refs, hyps), 2)


# ---------------------------------------------------------------------------------------------- talking to the server

def rest_transcripts(url: str, clips: list[Clip], pairs: set[tuple[int, int]], gap_s: float) -> dict:
    """``/transcribe`` of each distinct pair's audio, one at a time before any stream: the accuracy the streams
    are held to, on an idle server."""
    with httpx.Client(timeout=600) as http:
        return {p: http.post(f"{url}/transcribe", files={"file": ("pair.wav", wav_bytes(pair_audio(clips, p, gap_s)))})
                .raise_for_status().json()["text"] for p in sorted(pairs)}


def encode_chunks(audio: np.ndarray, encoding: str) -> tuple[dict, list[bytes]]:
    """The stream's config message and its chunks: 16 kHz ``pcm_s16le``, or 8 kHz G.711 (``mulaw``/``alaw``)
    as a telephone line delivers it."""
    if encoding == "pcm_s16le":
        return {"sample_rate": RATE, "encoding": encoding}, pcm_chunks(audio, RATE, CHUNK_MS)
    return {"sample_rate": TELEPHONE_RATE, "encoding": encoding}, g711_chunks(audio, RATE, encoding, CHUNK_MS)


async def play_stream(url: str, audio: np.ndarray, pair: tuple[int, int], delay_s: float,
                      encoding: str = "pcm_s16le") -> StreamResult:
    """One real-time stream: paced chunks, then eof; records when each chunk went out and each message came in."""
    result = StreamResult(pair)
    await asyncio.sleep(delay_s)
    try:
        async with connect(stream_url(url), proxy=None, max_size=None) as ws:

            async def listen() -> None:
                async for raw in ws:
                    result.messages.append((time.monotonic(), json.loads(raw)))

            listener = asyncio.create_task(listen())
            config, chunks = encode_chunks(audio, encoding)
            await ws.send(json.dumps({"type": "config", **config}))
            start = time.monotonic()
            for k, chunk in enumerate(chunks):
                await asyncio.sleep(max(0.0, start + k * CHUNK_MS / 1000 - time.monotonic()))
                await ws.send(chunk)
                result.sent_at.append(time.monotonic())
            await ws.send(json.dumps({"type": "eof"}))
            result.eof_at = time.monotonic()
            await listener
            if ws.close_code != 1000:
                result.error = f"closed with {ws.close_code} {ws.close_reason}"
    except (OSError, WebSocketException) as e:
        result.error = f"{type(e).__name__}: {e}"
    errors = [m["message"] for _, m in result.messages if m.get("type") == "error"]
    if errors:
        result.error = errors[0]
    return result


async def upload_every(url: str, wav: bytes, stop: asyncio.Event) -> tuple[int, int]:
    """Start one upload every UPLOAD_EVERY_S until ``stop``, without waiting for the previous one (a slow answer
    must not thin the load); returns (succeeded, posted)."""
    async with httpx.AsyncClient(timeout=600) as http:

        async def post() -> bool:
            try:
                return (await http.post(f"{url}/transcribe", files={"file": ("clip.wav", wav)})).status_code == 200
            except httpx.HTTPError:
                return False

        posts = []
        while not stop.is_set():
            posts.append(asyncio.create_task(post()))
            try:
                await asyncio.wait_for(stop.wait(), UPLOAD_EVERY_S)
            except TimeoutError:
                pass
        outcomes = await asyncio.gather(*posts)
    return sum(outcomes), len(outcomes)


async def run_streams(url: str, clips: list[Clip], n: int, gap_s: float, rng: random.Random,
                      upload_wav: bytes | None, encoding: str = "pcm_s16le") -> tuple[list[StreamResult], str | None]:
    """N streams at once, staggered within the first second; with ``upload_wav``, uploads alongside them."""
    stop = asyncio.Event()
    uploads = asyncio.create_task(upload_every(url, upload_wav, stop)) if upload_wav else None
    results = await asyncio.gather(*(play_stream(url, pair_audio(clips, p, gap_s), p, rng.uniform(0, 1), encoding)
                                     for p in clip_pairs(len(clips), n)))
    stop.set()
    if uploads is None:
        return results, None
    ok, posted = await uploads
    return results, f"{ok}/{posted}"


# ---------------------------------------------------------------------------------------------- measuring

def final_latencies(result: StreamResult, endpoint_s: float) -> tuple[list[float], list[float]]:
    """(mid-stream, after-eof) final latencies of one stream in ms, as the module docstring defines them."""
    finals = [(t, m) for t, m in result.messages if m.get("type") == "final"]
    mid, eof = [], []
    for i, (received, final) in enumerate(finals):
        if i == len(finals) - 1 and received > result.eof_at:
            eof.append(1000 * (received - result.eof_at))
            continue
        chunk = math.ceil((final["end"] - PAD_S + endpoint_s) * 1000 / CHUNK_MS - 1e-9) - 1
        due = result.sent_at[max(0, chunk)] if chunk < len(result.sent_at) else result.eof_at
        mid.append(1000 * (received - due))
    return mid, eof


def partial_intervals(result: StreamResult) -> list[float]:
    last: dict[int, float] = {}
    intervals = []
    for received, m in result.messages:
        if m.get("type") == "partial":
            if m["segment"] in last:
                intervals.append(1000 * (received - last[m["segment"]]))
            last[m["segment"]] = received
    return intervals


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summarise(results: list[StreamResult], clips: list[Clip], rest: dict, endpoint_s: float,
              uploads: str | None) -> dict:
    """One run's row: latencies pooled over its streams, WERs over its streams' pairs."""
    mid, eof, intervals = [], [], []
    for r in results:
        if r.error:  # counted, not timed: its finals may be cut short
            continue
        m, e = final_latencies(r, endpoint_s)
        mid, eof, intervals = mid + m, eof + e, intervals + partial_intervals(r)
    refs = [f"{clips[r.pair[0]].text} {clips[r.pair[1]].text}" for r in results]
    finals = [" ".join(m["text"] for _, m in r.messages if m.get("type") == "final") for r in results]
    return {"streams": len(results), "finals": len(mid) + len(eof), "errors": sum(r.error is not None for r in results),
            "final_latency_p50_ms": percentile(mid + eof, 50), "final_latency_p95_ms": percentile(mid + eof, 95),
            "midstream_latency_p50_ms": percentile(mid, 50), "eof_latency_p50_ms": percentile(eof, 50),
            "partial_interval_p50_ms": percentile(intervals, 50),
            "wer_finals": wer_percent(refs, finals), "wer_rest": wer_percent(refs, [rest[r.pair] for r in results]),
            "uploads_ok_during": uploads}


def measure(url: str, clips: list[Clip], args: argparse.Namespace, endpoint_s: float) -> list[dict]:
    """Every run on one server, smallest first; uploads go alongside the largest."""
    runs = sorted(args.streams)
    rest = rest_transcripts(url, clips, {p for n in runs for p in clip_pairs(len(clips), n)}, args.gap_s)
    rng = random.Random(args.seed)
    rows = []
    for i, n in enumerate(runs):
        upload = wav_bytes(clips[0].audio) if i == len(runs) - 1 else None
        results, uploads = asyncio.run(run_streams(url, clips, n, args.gap_s, rng, upload, args.encoding))
        for error in sorted({r.error for r in results if r.error}):
            print(f"{n} streams: error: {error}")
        rows.append(summarise(results, clips, rest, endpoint_s, uploads))
    return rows


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        settings[key.strip().lower().removeprefix("asr_")] = value
    return settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="measure this running server instead of starting one")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16], help="concurrent streams of each run")
    ap.add_argument("--gap-s", type=float, default=1.0, help="silence between a stream's two clips")
    ap.add_argument("--clips", type=int, default=32, help="clips taken from the manifest")
    ap.add_argument("--manifest", type=Path, default=None, help="default: the corpus's test_unseen, else the fixtures")
    ap.add_argument("--seed", type=int, default=0, help="seeds the streams' start times")
    ap.add_argument("--encoding", choices=["pcm_s16le", *G711_SUBTYPES], default="pcm_s16le",
                    help="mulaw/alaw: the streams arrive as from a telephone line, 8 kHz G.711 (wer_rest stays the "
                         "16 kHz upload)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an ASR_ setting of the local server, e.g. stream_partial_interval_ms=500 (repeatable)")
    args = ap.parse_args(argv)
    settings = parse_settings(args.set)
    endpoint_ms = float(settings.get("stream_endpoint_silence_ms", DEFAULT_ENDPOINT_MS))
    endpoint_s = max(1, round(endpoint_ms / 1000 / FRAME_S)) * FRAME_S  # whole VAD frames, as the server counts
    manifest = args.manifest or default_manifest()
    clips = load_clips(manifest, args.clips)
    if len(clips) < 2:
        raise SystemExit(f"{manifest}: fewer than 2 usable clips")
    print(f"{len(clips)} clips from {manifest}, {sum(len(c.audio) for c in clips) / RATE / len(clips):.1f} s each on "
          f"average; gap {args.gap_s:g} s; runs of {', '.join(map(str, sorted(args.streams)))} streams; "
          f"server settings: {settings or 'defaults'}; streams in {args.encoding}")
    if args.url:
        rows = measure(args.url.rstrip("/"), clips, args, endpoint_s)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with ServerProcess(args.weights, Path(tmp) / "server.log", settings) as server:
                rows = measure(server.url, clips, args, endpoint_s)
    print_table(rows, COLUMNS)
    emit(rows[-1] | {"errors": sum(r["errors"] for r in rows), "runs": rows, "gap_s": args.gap_s,
                     "clips": len(clips), "manifest": str(manifest), "settings": settings, "encoding": args.encoding})


if __name__ == "__main__":
    main()
