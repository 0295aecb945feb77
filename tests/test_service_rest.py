"""REST and OpenAI-compatible API against a real uvicorn server (tiny random checkpoint, espeak-ng speech)."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import encode
from tests.golden import WEIGHTS


def post(server, body: bytes | None = None, *, files=None, data=None, params=None, headers=None,
         path: str = "/transcribe") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, files=files, data=data, params=params,
                      headers=headers, timeout=60)


def upload(server, audio_bytes: bytes, name: str = "audio", **kwargs) -> httpx.Response:
    return post(server, files={"file": (name, audio_bytes)}, **kwargs)


# ---------------------------------------------------------------------------- health and the happy path


def test_health_ready_and_metrics(server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": "random-test-model"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("asr_requests_total", "asr_request_latency_seconds", "asr_batch_size", "asr_queue_depth",
                 "asr_active_streams", "asr_audio_seconds_total", "asr_real_time_factor", "asr_ready 1.0"):
        assert name in text


def as_format(audio: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """The clip re-encoded in another container, at another rate and channel count where that helps."""
    import torch
    import torchaudio.functional as AF

    if fmt == "flac-44k-stereo":
        up = AF.resample(torch.from_numpy(audio), 16000, 44100).numpy()
        return encode(np.stack([up, up], axis=1), 44100, "FLAC"), "a.flac"
    if fmt == "ogg":
        return encode(audio, 16000, "OGG", "VORBIS"), "a.ogg"
    if fmt == "mp3":
        return encode(audio, 16000, "MP3", "MPEG_LAYER_III"), "a.mp3"
    if fmt == "wav-8k":
        return encode(AF.resample(torch.from_numpy(audio), 16000, 8000).numpy(), 8000, "WAV", "PCM_16"), "a.wav"
    if fmt in ("wav-8k-ulaw", "wav-8k-alaw"):  # telephony: G.711 in a WAV, one byte a sample
        subtype = "ULAW" if fmt.endswith("ulaw") else "ALAW"
        return encode(AF.resample(torch.from_numpy(audio), 16000, 8000).numpy(), 8000, "WAV", subtype), "a.wav"
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", ["espeak-wav", "flac-44k-stereo", "ogg", "mp3", "wav-8k", "wav-8k-ulaw", "wav-8k-alaw"])
def test_every_format_transcribes(server, speech, fmt: str) -> None:
    clip = speech["hello"]
    data, name = (clip.wav, "a.wav") if fmt == "espeak-wav" else as_format(clip.audio, fmt)
    r = upload(server, data, name)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "random-test-model"
    assert abs(body["duration"] - clip.seconds) < 0.12  # MP3 adds codec padding
    assert len(body["segments"]) == 1 and body["segments"][0]["start"] == 0.0
    assert body["text"] == body["segments"][0]["text"]
    assert set(body["timings"]) == {"queue_ms", "compute_ms", "preprocess_ms"} and body["timings"]["compute_ms"] > 0
    assert r.headers["x-request-id"]


def test_raw_body_matches_multipart_and_lossless_formats_agree(server, speech) -> None:
    pcm = (speech["fox"].audio * 32767).astype(np.int16)
    wav, flac = encode(pcm, 16000, "WAV", "PCM_16"), encode(pcm, 16000, "FLAC", "PCM_16")
    raw = post(server, wav, headers={"content-type": "audio/wav"}).json()
    assert raw["text"] == upload(server, flac, "a.flac").json()["text"]
    assert raw["text"] == upload(server, wav, "a.wav").json()["text"]


def test_options_in_query_or_form(server, speech) -> None:
    r = upload(server, speech["fox"].wav, params={"n_best": 2})
    seg = r.json()["segments"][0]
    assert len(seg["n_best"]) == 2 and seg["n_best"][0]["text"] == seg["text"]
    r = upload(server, speech["fox"].wav, data={"beam_size": "1"})
    assert r.status_code == 200 and "n_best" not in r.json()["segments"][0]


def test_word_timestamps_on_request(launch, speech) -> None:
    """The shipped model (a random one emits runs of one token that CTC cannot align): every segment's words,
    in order, inside the segment."""
    gap = np.zeros(int(1.5 * 16000), np.float32)
    audio = np.concatenate([np.concatenate([gap, speech[k].audio]) for k in ("hello", "fox", "weather")] * 3)
    wav = encode(audio, 16000, "WAV")
    with launch(weights=WEIGHTS, default_beam_size=2) as server:
        plain = upload(server, wav).json()
        assert all("words" not in s for s in plain["segments"])
        for kwargs in ({"params": {"word_timestamps": "true"}}, {"data": {"word_timestamps": "1"}}):
            timed = upload(server, wav, **kwargs).json()
            assert [s["text"] for s in timed["segments"]] == [s["text"] for s in plain["segments"]]
            assert len(timed["segments"]) == 9
            for seg in timed["segments"]:
                assert seg["words"] and " ".join(w["word"] for w in seg["words"]) == seg["text"]
                assert all(seg["start"] <= w["start"] <= w["end"] <= seg["end"] for w in seg["words"])
        r = upload(server, wav, data={"word_timestamps": "maybe"})
        assert r.status_code == 422 and "word_timestamps" in r.json()["detail"]


def test_long_audio_is_split_at_pauses_and_batched(server, speech) -> None:
    gap = np.zeros(int(1.5 * 16000), np.float32)
    parts = [speech[k].audio for k in ("hello", "fox", "weather")] * 5
    audio = np.concatenate([np.concatenate([gap, p]) for p in parts])
    assert len(audio) / 16000 > 20.0  # over the model's segment limit
    before = server.metric("asr_batch_size_count")
    body = upload(server, encode(audio, 16000, "WAV"), "long.wav").json()
    segs = body["segments"]
    assert len(segs) >= 10
    assert all(s["end"] - s["start"] <= 20.0 for s in segs)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segs))
    assert body["text"] == " ".join(s["text"] for s in segs if s["text"])
    assert server.metric("asr_batch_size_count") - before < len(segs)  # its segments shared batches


def test_silent_audio_gives_an_empty_transcript(server) -> None:
    r = upload(server, encode(np.zeros(16000, np.float32), 16000, "WAV"))
    assert r.status_code == 200
    assert r.json()["text"] == "" and r.json()["segments"] == [] and r.json()["duration"] == 1.0


def test_concurrent_requests_share_batches(server, speech) -> None:
    clips = [speech[k].wav for k in ("hello", "fox", "weather")]
    before = server.metric("asr_batch_size_count")

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(f"{server.url}/transcribe", files={"file": ("a.wav", clips[i % 3])})
                     for i in range(16)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 16
    batches = server.metric("asr_batch_size_count") - before
    assert 1 <= batches < 16
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == 16


def test_model_work_runs_on_the_model_thread_and_decoding_on_one_intra_op_thread(server, speech, monkeypatch) -> None:
    """Only the model's thread may hold an OpenMP team (see app/worker.py): every decode of an upload or a stream
    runs there, and the threads that decode uploads from bytes run torch on one intra-op thread."""
    import threading

    import torch

    import app.transcriber
    from app.client import stream_audio
    from app.worker import DEFAULT_THREADS

    model_calls: list[tuple[str, int]] = []
    prepare_calls: list[tuple[str, int]] = []
    recognizer = server.state.worker.recognizer
    transcribe, plan = recognizer.transcribe, app.transcriber.decode_and_plan

    def on(calls: list, fn):
        def spy(*args, **kwargs):
            calls.append((threading.current_thread().name, torch.get_num_threads()))
            return fn(*args, **kwargs)
        return spy

    monkeypatch.setattr(recognizer, "transcribe", on(model_calls, transcribe))
    monkeypatch.setattr(app.transcriber, "decode_and_plan", on(prepare_calls, plan))
    assert upload(server, speech["fox"].wav).status_code == 200
    messages = asyncio.run(stream_audio(server.url, speech["hello"].audio, 16000, chunk_ms=100))
    assert any(m["type"] == "final" for m in messages)
    assert len(model_calls) >= 2 and len(prepare_calls) == 1
    assert {name for name, _ in model_calls} == {"asr-model_0"}
    assert {threads for _, threads in model_calls} == {DEFAULT_THREADS}
    assert prepare_calls[0][0].startswith("asr-decode") and prepare_calls[0][1] == 1


# ---------------------------------------------------------------------------- bad input: clear 4xx, never a 500


def nan_wav() -> bytes:
    audio = np.zeros(1600, np.float32)
    audio[10] = np.nan
    return encode(audio, 16000, "WAV", "FLOAT")


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"this is not audio at all", 400, "could not decode audio"),
    (b"", 400, "empty"),
    (encode(np.zeros(0, np.float32), 16000, "WAV"), 400, "no samples"),
    (nan_wav(), 400, "NaN"),
])
def test_bad_audio_is_a_clear_400(server, data: bytes, status: int, message: str) -> None:
    for r in (upload(server, data), post(server, data, headers={"content-type": "application/octet-stream"})):
        assert r.status_code == status, r.text
        assert message in r.json()["detail"]
        assert "BytesIO" not in r.json()["detail"]


@pytest.mark.parametrize(("params", "form", "message"), [
    ({"beam_size": 0}, None, "beam_size"),
    ({"beam_size": 1000}, None, "beam_size"),
    ({"beam_size": "wide"}, None, "beam_size"),
    ({"n_best": 3}, None, "n_best"),
    (None, {"beam_size": "x"}, "beam_size"),
    (None, {"n_best": "0"}, "n_best"),
])
def test_bad_parameters_are_422(server, speech, params, form, message: str) -> None:
    r = upload(server, speech["hello"].wav, params=params, data=form)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_malformed_requests(server, speech) -> None:
    r = post(server, files={"audio": ("a.wav", speech["hello"].wav)})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = post(server, data={"file": "abc"})
    assert r.status_code == 415
    r = post(server, b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    r = post(server, b"x", headers={"content-length": "1", "content-type": "multipart/form-data"})
    assert r.status_code == 400
    assert httpx.get(f"{server.url}/transcribe").status_code == 405
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # and it still serves


# ---------------------------------------------------------------------------- OpenAI-compatible API


@pytest.fixture(scope="module")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0, timeout=60)


def test_openai_client_json_and_text_formats(openai_client, server, speech, tmp_path) -> None:
    path = tmp_path / "fox.wav"
    path.write_bytes(speech["fox"].wav)
    expected = upload(server, speech["fox"].wav).json()["text"]
    with path.open("rb") as f:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                           temperature=0.0)
    assert result.text == expected
    with path.open("rb") as f:
        verbose = openai_client.audio.transcriptions.create(model="whisper-1", file=f,
                                                            response_format="verbose_json")
    assert verbose.text == expected and verbose.duration == pytest.approx(speech["fox"].seconds, abs=0.01)
    assert verbose.segments[0].start == 0.0 and verbose.segments[0].text == expected
    with path.open("rb") as f:
        text = openai_client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert text.strip() == expected
    end = f"00:00:{verbose.segments[0].end:06.3f}"
    with path.open("rb") as f:
        srt = openai_client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    with path.open("rb") as f:
        vtt = openai_client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    if expected:
        assert srt == f"1\n00:00:00,000 --> {end.replace('.', ',')}\n{expected}\n"
        assert vtt == f"WEBVTT\n\n00:00:00.000 --> {end}\n{expected}\n"
    else:  # a segment without text gets no cue
        assert (srt, vtt) == ("", "WEBVTT\n\n")


def sse_events(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [json.loads(b[len("data: "):]) for b in blocks]


def test_openai_stream_sends_a_delta_per_segment_then_done(openai_client, server, speech) -> None:
    gap = np.zeros(int(1.5 * 16000), np.float32)
    audio = np.concatenate([np.concatenate([gap, speech[k].audio]) for k in ("hello", "fox", "weather")] * 5)
    wav = encode(audio, 16000, "WAV")
    whole = upload(server, wav, "long.wav").json()
    spoken = [s["text"] for s in whole["segments"] if s["text"]]
    assert len(spoken) >= 10, spoken  # the random test model still says something per segment
    r = post(server, files={"file": ("long.wav", wav)}, path="/v1/audio/transcriptions",
             data={"stream": "true", "response_format": "text"})
    assert r.status_code == 200
    events = sse_events(r)
    deltas = [e["delta"] for e in events[:-1]]
    assert all(e["type"] == "transcript.text.delta" for e in events[:-1]) and len(deltas) == len(spoken)
    assert [d.strip() for d in deltas] == spoken
    assert events[-1] == {"type": "transcript.text.done", "text": whole["text"]} == {
        "type": "transcript.text.done", "text": "".join(deltas)}
    # The official client parses the same stream.
    stream = openai_client.audio.transcriptions.create(model="whisper-1", file=("fox.wav", speech["fox"].wav),
                                                       stream=True)
    received = list(stream)
    assert received[-1].type == "transcript.text.done"
    assert received[-1].text == upload(server, speech["fox"].wav).json()["text"]
    assert "".join(e.delta for e in received[:-1]) == received[-1].text
    # Silence: no delta, an empty done.
    r = post(server, files={"file": ("quiet.wav", encode(np.zeros(16000, np.float32), 16000, "WAV"))},
             path="/v1/audio/transcriptions", data={"stream": "true"})
    assert sse_events(r) == [{"type": "transcript.text.done", "text": ""}]


def test_openai_word_timestamps(openai_client, server, speech) -> None:
    native = upload(server, speech["fox"].wav, params={"word_timestamps": "true"}).json()
    verbose = openai_client.audio.transcriptions.create(model="whisper-1", file=("fox.wav", speech["fox"].wav),
                                                        response_format="verbose_json",
                                                        timestamp_granularities=["word", "segment"])
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w["word"], w["start"], w["end"]) for s in native["segments"] for w in s["words"]]
    assert len(verbose.segments) == len(native["segments"])
    plain = post(server, files={"file": ("a.wav", speech["fox"].wav)}, path="/v1/audio/transcriptions",
                 data={"response_format": "verbose_json"}).json()
    assert "words" not in plain and plain["segments"]
    r = post(server, files={"file": ("a.wav", speech["fox"].wav)}, path="/v1/audio/transcriptions",
             data={"timestamp_granularities[]": "word"})
    assert r.status_code == 200 and r.headers["x-ignored-parameters"] == "timestamp_granularities"
    r = post(server, files={"file": ("a.wav", speech["fox"].wav)}, path="/v1/audio/transcriptions",
             data={"timestamp_granularities[]": "phoneme", "response_format": "verbose_json"})
    assert r.status_code == 400 and "timestamp_granularities" in r.json()["error"]["message"]


def test_openai_ignored_parameters_are_reported(server, speech) -> None:
    r = post(server, files={"file": ("a.wav", speech["hello"].wav)}, path="/v1/audio/transcriptions",
             data={"model": "whisper-1", "prompt": "Some context.", "temperature": "0.4", "language": "fr"})
    assert r.status_code == 200
    assert r.headers["x-ignored-parameters"] == "prompt, temperature, language"


def test_openai_errors_use_openai_shape(openai_client, server, speech) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        openai_client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"junk"))
    assert "could not decode audio" in err.value.body["message"]
    r = post(server, files={"file": ("a.wav", speech["hello"].wav)}, path="/v1/audio/transcriptions",
             data={"response_format": "docx"})
    assert r.status_code == 400 and "response_format" in r.json()["error"]["message"]
    r = post(server, files={"file": ("a.wav", speech["hello"].wav)}, path="/v1/audio/transcriptions",
             data={"stream": "true", "response_format": "srt"})
    assert r.status_code == 400 and "cannot be streamed" in r.json()["error"]["message"]
    r = post(server, files={"file": ("a.wav", b"junk")}, path="/v1/audio/transcriptions", data={"stream": "true"})
    assert r.status_code == 400 and "could not decode audio" in r.json()["error"]["message"]
    r = post(server, speech["hello"].wav, path="/v1/audio/transcriptions", headers={"content-type": "audio/wav"})
    assert r.status_code == 400


def test_openai_models(openai_client) -> None:
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["random-test-model"]
    assert openai_client.models.retrieve("random-test-model").id == "random-test-model"
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("whisper-1")


def test_openapi_documents_every_route(server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/transcribe", "/v1/audio/transcriptions", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/transcribe"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "audio/*" in body


def test_sf_can_write_every_format_we_test() -> None:
    assert {"WAV", "FLAC", "OGG", "MP3"} <= set(sf.available_formats())


def test_the_servers_ctc_settings_reach_the_decoder(launch, checkpoint, speech) -> None:
    """Served with CTC re-ranking switched off, a transcript equals the recognizer's attention-only decode."""
    from model.decoding import DecodeOptions
    from model.recognizer import Recognizer

    options = DecodeOptions(beam_size=2, n_best=2, ctc_weight=0.0, ctc_mode="rescore")
    expected = Recognizer.load(checkpoint, device="cpu").transcribe([speech["fox"].audio], options)[0]
    with launch(ctc_weight=0.0, ctc_mode="rescore") as live:
        body = httpx.post(f"{live.url}/transcribe?n_best=2", files={"file": ("a.wav", speech["fox"].wav)},
                          timeout=60).json()
    assert body["text"] == expected.text
    alternatives = body["segments"][0]["n_best"]
    assert [h["text"] for h in alternatives] == [h.text for h in expected.n_best]
    assert [h["score"] for h in alternatives] == pytest.approx([h.score for h in expected.n_best], abs=1e-3)
