"""The service's audio pieces on their own: VAD, segmenting, stream resampling, PCM frames, endpoints, formats."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from app.config import Settings
from app.endpointer import EndpointConfig, Endpointer
from app.formats import to_srt, to_vtt
from app.pcm import PcmDecoder, PcmError
from model.resample import StreamResampler
from app.segmenter import plan_segments
from app.transcriber import SegmentText
from app.vad import SpeechDetector

RATE = 16000


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def test_vad_finds_speech_and_not_silence(detector: SpeechDetector, speech) -> None:
    assert detector.speech_regions(silence(2.0)) == []
    noise = (0.001 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32)
    assert detector.speech_regions(noise) == []
    audio = np.concatenate([silence(1.0), speech["fox"].audio, silence(1.0)])
    (start, end), = detector.speech_regions(audio)
    assert 0.5 * RATE < start < 2.0 * RATE and end > start + 0.5 * RATE


def test_vad_stream_matches_whole_clip_scoring(detector: SpeechDetector, speech) -> None:
    audio = np.concatenate([speech["hello"].audio, silence(0.3), speech["fox"].audio])
    whole = detector.probabilities(audio)
    stream, parts = detector.stream(), []
    for i in range(0, len(audio), 1234):
        parts.append(stream.push(audio[i: i + 1234]))
    parts.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_plan_segments(detector: SpeechDetector, speech) -> None:
    clip = speech["fox"].audio
    assert plan_segments(detector, clip, RATE, 20.0) == [(0, len(clip))]  # short: the whole clip, untouched
    assert plan_segments(detector, silence(3.0), RATE, 20.0) == []
    long = np.concatenate([np.concatenate([silence(1.2), speech[k].audio]) for k in ("hello", "fox", "weather")] * 2)
    spans = plan_segments(detector, long, RATE, max_segment_s=4.0)
    assert len(spans) >= 6
    assert all(0 <= a < b <= len(long) and b - a <= 4.0 * RATE for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
    # Two utterances a pause apart, short enough for one segment, are still decoded one by one.
    two = np.concatenate([speech["fox"].audio, silence(1.0), speech["weather"].audio])
    spans = plan_segments(detector, two, RATE, 20.0)
    assert len(spans) == 2 and spans[0][1] <= len(speech["fox"].audio) + 0.5 * RATE <= spans[1][0] + 0.5 * RATE


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_is_seamless(rate: int) -> None:
    x = np.random.default_rng(rate).standard_normal(rate + 321).astype(np.float32)
    reference = AF.resample(torch.from_numpy(x), rate, RATE).numpy()
    resampler, out, i = StreamResampler(rate, RATE), [], 0
    for size in [1, 7, 500, 1600, 3, 4410, 999] * 10:
        out.append(resampler.push(x[i: i + size]))
        i += size
        if i >= len(x):
            break
    out.append(resampler.flush())
    y = np.concatenate(out)
    assert len(y) == len(reference)
    np.testing.assert_allclose(y, reference, atol=1e-4)


def test_pcm_decoder_carries_split_samples_and_rejects_nan() -> None:
    pcm = (np.arange(5, dtype="<i2") * 1000).tobytes()
    dec = PcmDecoder("pcm_s16le")
    got = np.concatenate([dec.decode(pcm[:3]), dec.decode(pcm[3:])])
    np.testing.assert_allclose(got, np.arange(5) * 1000 / 32768)
    with pytest.raises(PcmError, match="NaN"):
        PcmDecoder("f32le").decode(np.array([0.1, np.nan], "<f4").tobytes())
    with pytest.raises(PcmError, match="unsupported encoding"):
        PcmDecoder("mp3")


def _reference_g711(codes: bytes, encoding: str) -> np.ndarray:
    """Python's own G.711 decoder (audioop: deprecated, still in 3.11-3.12), used only to check libsndfile's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    linear = audioop.ulaw2lin(codes, 2) if encoding == "mulaw" else audioop.alaw2lin(codes, 2)
    return np.frombuffer(linear, "<i2") / 32768


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_frames_decode_to_the_standard_values(encoding: str) -> None:
    """All 256 codes, fed in frames of 1, 2 and 3 bytes, give the 16-bit values of G.711, scaled like pcm_s16le."""
    codes = bytes(range(256))
    dec = PcmDecoder(encoding)
    pieces, start = [], 0
    for size in itertools.cycle([1, 2, 3]):
        if start >= len(codes):
            break
        pieces.append(dec.decode(codes[start : start + size]))
        start += size
    got = np.concatenate(pieces)
    assert got.dtype == np.float32 and got.size == 256
    np.testing.assert_array_equal(got, _reference_g711(codes, encoding).astype(np.float32))
    assert dec.decode(b"").size == 0


def test_g711_round_trips_a_tone_through_soundfile() -> None:
    """What a telephony client sends (soundfile's μ-law/A-law encoder) decodes to the tone within G.711's error."""
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000).astype(np.float32)
    for encoding, subtype in [("mulaw", "ULAW"), ("alaw", "ALAW")]:
        buf = io.BytesIO()
        sf.write(buf, tone, 8000, format="RAW", subtype=subtype)
        got = PcmDecoder(encoding).decode(buf.getvalue())
        assert got.size == tone.size
        assert np.abs(got - tone).max() < 0.02  # 8-bit companding: a step of at most 1/32 near full scale


def test_endpointer_opens_closes_and_drops_blips() -> None:
    cfg = EndpointConfig(endpoint_frames=5, pad_frames=2, min_speech_frames=4, max_frames=40)
    ep = Endpointer(cfg)
    probs = [0.0] * 10 + [0.9] * 10 + [0.1] * 6 + [0.9] * 2 + [0.0] * 8
    closed = ep.update(probs)
    assert closed == [(8, 22)]  # opened 2 frames early, closed 2 frames after the last speech; the blip dropped
    assert ep.start is None
    ep.update([0.9] * 6)
    assert ep.start is not None and ep.finish() is not None  # eof closes the open segment


def test_endpointer_foresees_its_close_once_the_padding_has_arrived() -> None:
    cfg = EndpointConfig(endpoint_frames=5, pad_frames=2, min_speech_frames=4, max_frames=40)
    ep = Endpointer(cfg)
    ep.update([0.0] * 3 + [0.9] * 10 + [0.1])
    assert ep.likely_close() is None  # one quiet frame: the padding after the speech is not there yet
    ep.update([0.1])
    assert ep.likely_close() == (1, 15)
    ep.update([0.9])
    assert ep.likely_close() is None  # speech resumed
    ep.update([0.1] * 2)
    expected = ep.likely_close()
    assert ep.update([0.1] * 3) == [expected]  # the endpoint closes exactly what was foreseen
    ep.update([0.9] * 6 + [0.0] * 3)
    assert ep.finish() == (19, 29)  # eof: 2 frames after the last speech (frame 26), not at the last frame (30)


def test_endpointer_cuts_at_the_length_limit() -> None:
    ep = Endpointer(EndpointConfig(endpoint_frames=5, pad_frames=0, min_speech_frames=2, max_frames=10))
    closed = ep.update([0.9] * 25)
    assert closed == [(0, 10), (10, 20)] and ep.start == 20


def test_subtitles() -> None:
    segs = [SegmentText(0.0, 1.5, "hello", 0.0, ()), SegmentText(61.25, 3723.5, "world", 0.0, ())]
    assert to_srt(segs) == "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n00:01:01,250 --> 01:02:03,500\nworld\n"
    assert to_vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello\n")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("ASR_API_KEY", "")
    monkeypatch.setenv("ASR_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("ASR_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key is None and s.max_batch_size == 4 and s.log_level == "debug"
    assert s.weights.name == "weights" and (s.weights.parent / "app").is_dir()
    monkeypatch.setenv("ASR_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError):
        Settings()


def test_decode_settings_become_each_requests_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.decoding import DecodeOptions

    assert Settings().decoding() == DecodeOptions(beam_size=Settings().default_beam_size)
    monkeypatch.setenv("ASR_CTC_WEIGHT", "0.5")
    monkeypatch.setenv("ASR_CTC_MODE", "rescore")
    monkeypatch.setenv("ASR_DEFAULT_BEAM_SIZE", "3")
    monkeypatch.setenv("ASR_LM_FUSION_WEIGHT", "0.2")
    monkeypatch.setenv("ASR_LM_FUSION_BONUS", "1.5")
    s = Settings()
    lm = {"lm_fusion_weight": 0.2, "lm_fusion_bonus": 1.5}
    assert s.decoding() == DecodeOptions(beam_size=3, ctc_weight=0.5, ctc_mode="rescore", **lm)
    assert s.decoding(7, n_best=2) == DecodeOptions(beam_size=7, n_best=2, ctc_weight=0.5, ctc_mode="rescore", **lm)
    for name, bad in (("ASR_CTC_MODE", "shallow"), ("ASR_CTC_WEIGHT", "1.5"), ("ASR_LM_FUSION_WEIGHT", "2"),
                      ("ASR_LM_FUSION_BONUS", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError):
            Settings()
        monkeypatch.delenv(name)
