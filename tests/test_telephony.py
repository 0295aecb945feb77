"""The shipped model over a telephone line: committed clips sent as 8 kHz G.711 μ-law, on the WebSocket and as a
WAV upload, transcribe like their 16 kHz PCM source.

The telephone channel is simulated the way a gateway makes it: resample to 8 kHz (model.resample), then 8-bit
μ-law companding by libsndfile. The bound is the issue's: within 3 points of WER of the 16 kHz PCM stream (on a few clips, one word).
"""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import jiwer
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from app.client import pcm_chunks, stream_url
from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.resample import resample
from tests.conftest import exchange
from tests.test_shipped_model import WEIGHTS, clips

PACKET = 160  # bytes of μ-law in 20 ms at 8 kHz: what an RTP gateway sends at a time


def mulaw(audio: np.ndarray, fmt: str) -> bytes:
    """16 kHz float audio as it leaves a telephone line: 8 kHz, μ-law (headerless RAW or a WAV)."""
    buf = io.BytesIO()
    sf.write(buf, resample(audio, 16000, 8000), 8000, format=fmt, subtype="ULAW")
    return buf.getvalue()


async def _stream(url: str, config: dict, frames: list[bytes]) -> str:
    async with connect(stream_url(url), proxy=None, max_size=None) as ws:
        replies, code, _ = await exchange(ws, [json.dumps({"type": "config", **config}), *frames,
                                               json.dumps({"type": "eof"})])
    assert code == 1000, replies
    return " ".join(m["text"] for m in replies if m["type"] == "final" and m["text"])


@pytest.fixture(scope="module")
def transcripts(launch) -> dict[str, list[str]]:
    """Each clip's transcript (server defaults) as a 16 kHz PCM stream, a μ-law 8 kHz stream and a μ-law WAV."""
    items = clips()
    waves = [decode_audio(path.read_bytes(), 16000)[0] for path, _ in items]
    out: dict[str, list[str]] = {"ref": [text for _, text in items], "pcm": [], "mulaw": [], "mulaw_wav": []}
    with launch(weights=WEIGHTS, default_beam_size=DecodeOptions.beam_size) as live:  # the defaults
        for wave in waves:
            out["pcm"].append(asyncio.run(_stream(live.url, {"sample_rate": 16000}, pcm_chunks(wave, 16000, 100))))
            codes = mulaw(wave, "RAW")
            frames = [codes[i: i + PACKET] for i in range(0, len(codes), PACKET)]
            out["mulaw"].append(asyncio.run(_stream(live.url, {"sample_rate": 8000, "encoding": "mulaw"}, frames)))
            r = httpx.post(f"{live.url}/transcribe", files={"file": ("call.wav", mulaw(wave, "WAV"))}, timeout=120)
            assert r.status_code == 200, r.text
            out["mulaw_wav"].append(r.json()["text"])
    return out


def word_errors(refs: list[str], hyps: list[str]) -> int:
    out = jiwer.process_words(refs, hyps)
    return out.substitutions + out.deletions + out.insertions


def test_a_mulaw_stream_transcribes_like_its_pcm_source(transcripts: dict[str, list[str]]) -> None:
    """Within 3 points of WER of the PCM stream; on these few words that is at most one more word error."""
    ref, pcm, law = transcripts["ref"], transcripts["pcm"], transcripts["mulaw"]
    words = sum(len(r.split()) for r in ref)
    print(f"{len(ref)} clips, {words} words: WER 16 kHz PCM {jiwer.wer(ref, pcm):.2%}, 8 kHz mu-law "
          f"{jiwer.wer(ref, law):.2%}; mu-law against PCM {jiwer.wer(pcm, law):.2%}")
    assert word_errors(ref, law) <= word_errors(ref, pcm) + max(1, int(0.03 * words)), list(zip(ref, pcm, law))


def test_a_mulaw_wav_upload_transcribes_like_the_stream(transcripts: dict[str, list[str]]) -> None:
    ref, pcm, wav = transcripts["ref"], transcripts["pcm"], transcripts["mulaw_wav"]
    words = sum(len(r.split()) for r in ref)
    assert word_errors(ref, wav) <= word_errors(ref, pcm) + max(1, int(0.03 * words)), list(zip(ref, pcm, wav))
