"""The WebSocket streaming protocol against a real uvicorn server."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from app.client import pcm_chunks, stream_audio, stream_url
from model.resample import resample
from tests.conftest import encode, exchange


def conversation(speech, gap_s: float = 1.2) -> np.ndarray:
    gap = np.zeros(int(gap_s * 16000), np.float32)
    return np.concatenate([speech["fox"].audio, gap, speech["weather"].audio, gap[:4000]])


async def session(url: str, messages: list, *, headers: dict | None = None) -> tuple[list[dict], int, str]:
    """Send ``messages`` (str = text frame, bytes = binary frame); collect replies until the server closes."""
    async with connect(stream_url(url), additional_headers=headers or {}, proxy=None, max_size=None) as ws:
        return await exchange(ws, messages)


def run(coro):
    return asyncio.run(coro)


def test_stream_sends_partials_before_each_final_and_closes_normally(server, speech) -> None:
    audio = conversation(speech)
    # Paced like a microphone: sent faster, a segment's partials may be overtaken (and dropped) by its final.
    messages = run(stream_audio(server.url, audio, 16000, chunk_ms=100, realtime=True))
    kinds = [m["type"] for m in messages]
    finals = [m for m in messages if m["type"] == "final"]
    assert len(finals) == 2, messages
    assert kinds[0] == "partial"  # speech produced a partial before the first final
    assert [f["segment"] for f in finals] == [0, 1]
    assert 0 <= finals[0]["start"] < finals[0]["end"] <= finals[1]["start"] < finals[1]["end"]
    assert finals[1]["end"] <= len(audio) / 16000 + 0.05
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)  # what the client sent
    for f in finals:  # each final is exactly what the REST API says about the same samples
        piece = pcm[round(f["start"] * 16000): round(f["end"] * 16000)]
        rest = httpx.post(f"{server.url}/transcribe", files={"file": ("s.wav", encode(piece, 16000, "WAV"))},
                          timeout=60).json()
        assert rest["text"] == f["text"]
    partial_segments = [m["segment"] for m in messages if m["type"] == "partial"]
    assert partial_segments == sorted(partial_segments)


def test_stream_at_other_rates_and_float_encoding(server, speech) -> None:
    import torch
    import torchaudio.functional as AF

    audio = AF.resample(torch.from_numpy(speech["fox"].audio), 16000, 44100).numpy()
    frames = [np.asarray(audio[i: i + 4410], "<f4").tobytes() for i in range(0, len(audio), 4410)]
    config = json.dumps({"type": "config", "sample_rate": 44100, "encoding": "f32le", "beam_size": 1})
    replies, code, _ = run(session(server.url, [config, *frames, json.dumps({"type": "eof"})]))
    assert code == 1000
    finals = [m for m in replies if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["end"] == pytest.approx(len(audio) / 44100, abs=0.1)


@pytest.mark.parametrize(("encoding", "subtype"), [("mulaw", "ULAW"), ("alaw", "ALAW")])
def test_stream_in_g711_at_8khz(server, speech, encoding: str, subtype: str) -> None:
    """Telephony: 8 kHz G.711 (one byte a sample) in 20 ms packets of 160 bytes, as a phone gateway sends it."""
    audio = resample(speech["fox"].audio, 16000, 8000)
    buf = io.BytesIO()
    sf.write(buf, audio, 8000, format="RAW", subtype=subtype)
    codes = buf.getvalue()
    assert len(codes) == len(audio)
    config = json.dumps({"type": "config", "sample_rate": 8000, "encoding": encoding, "beam_size": 1})
    frames = [codes[i: i + 160] for i in range(0, len(codes), 160)]
    replies, code, _ = run(session(server.url, [config, *frames, json.dumps({"type": "eof"})]))
    assert code == 1000
    finals = [m for m in replies if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["end"] == pytest.approx(len(audio) / 8000, abs=0.1)


def test_finals_carry_word_timings_when_asked(server, speech) -> None:
    audio = conversation(speech)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    frames = [pcm[i: i + 3200] for i in range(0, len(pcm), 3200)]
    eof = json.dumps({"type": "eof"})
    config = json.dumps({"type": "config", "word_timestamps": True})
    timed, code, _ = run(session(server.url, [config, *frames, eof]))
    plain, _, _ = run(session(server.url, [*frames, eof]))
    finals = [m for m in timed if m["type"] == "final"]
    assert code == 1000 and len(finals) == 2
    assert [f["text"] for f in finals] == [m["text"] for m in plain if m["type"] == "final"]
    assert all("words" not in m for m in plain)
    assert any(f["words"] for f in finals)
    for f in finals:
        if f["words"]:
            assert " ".join(w["word"] for w in f["words"]) == f["text"]
        assert all(f["start"] <= w["start"] <= w["end"] <= f["end"] for w in f["words"])


def test_final_arrives_soon_after_the_end_of_speech(server, speech) -> None:
    """Paced like a microphone: the final must not wait for eof, only for the endpoint silence."""
    clip = speech["hello"].audio
    audio = np.concatenate([clip, np.zeros(2 * 16000, np.float32)])
    arrivals = {}
    started = time.monotonic()

    def on_message(message: dict) -> None:
        arrivals.setdefault(message["type"], time.monotonic() - started)

    messages = run(stream_audio(server.url, audio, 16000, chunk_ms=100, realtime=True, on_message=on_message))
    speech_end = next(m for m in messages if m["type"] == "final")["end"]
    assert "final" in arrivals
    # end of speech (+ the 0.5 s endpoint silence) is reached at wall time ~speech_end; the final follows promptly
    assert arrivals["final"] - speech_end < 1.8, (arrivals, speech_end)
    assert arrivals["final"] < len(audio) / 16000  # before eof was even sent


def test_finals_are_decoded_before_their_endpoint_and_partials_come_from_ctc(server, speech, monkeypatch) -> None:
    """Paced like a microphone, each final's decode starts once its endpoint is likely (`likely_close`), and that
    decode is the one the final uses; partials are the CTC head's best path, at least every 300 ms of audio."""
    from app.engine import Priority

    submitted: list[tuple[Priority, bool]] = []
    engine = server.state.engine
    original = engine.submit

    def spy(audios, options, **kwargs):
        submitted.append((kwargs.get("priority"), options.ctc_greedy))
        return original(audios, options, **kwargs)

    monkeypatch.setattr(engine, "submit", spy)
    messages = run(stream_audio(server.url, conversation(speech), 16000, chunk_ms=100, realtime=True))
    finals = [m for m in messages if m["type"] == "final"]
    assert len(finals) == 2
    assert [p for p, _ in submitted].count(Priority.FINAL) == 2  # one decode per final: the early one was kept
    partials = [greedy for p, greedy in submitted if p is Priority.PARTIAL]
    assert partials and all(partials)
    assert server.state.settings.stream_partial_interval_ms <= 300


def test_silence_gives_no_finals_and_a_normal_close(server) -> None:
    frames = pcm_chunks(np.zeros(16000 * 2, np.float32), 16000, 100)
    replies, code, _ = run(session(server.url, [*frames, json.dumps({"type": "eof"})]))
    assert replies == [] and code == 1000


PCM = np.zeros(1600, "<i2").tobytes()


@pytest.mark.parametrize(("messages", "code", "fragment"), [
    (["{not json"], 1007, "JSON"),
    (["[1, 2]"], 1007, "type"),
    ([json.dumps({"type": "start"})], 1008, "unknown message type"),
    ([json.dumps({"type": "config", "encoding": "mp3"})], 1003, "unsupported encoding"),
    ([json.dumps({"type": "config", "encoding": "ulaw"})], 1003, "mulaw"),  # the message lists the names
    ([json.dumps({"type": "config", "encoding": 8})], 1007, "encoding"),
    ([json.dumps({"type": "config", "sample_rate": 100})], 1007, "sample_rate"),
    ([json.dumps({"type": "config", "beam_size": 0})], 1007, "beam_size"),
    ([json.dumps({"type": "config", "beam_size": 500})], 1007, "beam_size"),
    ([json.dumps({"type": "config", "samplerate": 8000})], 1007, "samplerate"),
    ([PCM, json.dumps({"type": "config"})], 1008, "before the first audio"),
    ([json.dumps({"type": "config", "encoding": "f32le"}), np.array([0.0, np.nan], "<f4").tobytes()], 1007, "NaN"),
    ([b"\0" * (1024 * 1024 + 2)], 1009, "limit"),
])
def test_protocol_errors_get_an_error_message_and_a_close_code(server, messages, code, fragment) -> None:
    replies, close_code, reason = run(session(server.url, messages))
    assert close_code == code
    assert replies and replies[-1]["type"] == "error" and fragment in replies[-1]["message"]
    assert fragment in reason or len(reason) >= 100


def test_a_client_that_vanishes_is_cleaned_up(server, speech) -> None:
    async def vanish():
        async with connect(stream_url(server.url), proxy=None) as ws:
            for chunk in pcm_chunks(speech["fox"].audio, 16000, 100):
                await ws.send(chunk)
            ws.transport.abort()  # no close handshake

    run(vanish())
    deadline = time.monotonic() + 10
    while server.state.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.state.streams
    # and streaming still works for everyone else
    assert run(stream_audio(server.url, speech["hello"].audio, 16000))[-1]["type"] == "final"


def test_an_absurd_frame_is_refused_by_the_websocket_layer(server, speech) -> None:
    replies, code, _ = run(session(server.url, [b"\0" * (3 * 1024 * 1024)]))
    assert code == 1009 and replies == []
    assert run(stream_audio(server.url, speech["hello"].audio, 16000))[-1]["type"] == "final"  # still serving
