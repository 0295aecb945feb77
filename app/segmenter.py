"""An upload's long-audio pipeline up to the model: decode it, then cut it into model-sized segments by voice
activity. The server and ``speech-transformer transcribe`` both run it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.audio import decode_audio

from .vad import SpeechDetector


def decode_and_plan(source: bytes | Path, detector: SpeechDetector, rate: int, max_segment_s: float,
                    max_audio_s: float | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The audio at ``rate`` and the ``(start, end)`` spans to decode (raises ``model.audio.AudioError``)."""
    audio, _ = decode_audio(source, target_rate=rate, max_seconds=max_audio_s)
    return audio, plan_segments(detector, audio, rate, max_segment_s)


def join_texts(texts: Iterable[str]) -> str:
    """One transcript from its segments' texts (segments without words leave no gap)."""
    return " ".join(t for t in texts if t)


PAUSE_S = 0.5  # a pause this long ends an utterance, as the stream's endpoint (ASR_STREAM_ENDPOINT_SILENCE_MS) does
MARGIN_S = 0.25  # silence kept on each side of a piece cut out of a longer upload


def plan_segments(detector: SpeechDetector, audio, rate: int, max_segment_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges to decode.

    * no speech anywhere: ``[]`` (the service answers with an empty transcript rather than decoding noise);
    * one utterance that fits the model's segment limit: the whole clip, untouched, as one segment;
    * otherwise one segment per utterance (speech between pauses of ``PAUSE_S``, with ``MARGIN_S`` of its silence
      either side): the model was trained on single sentences and hears two in one segment worse (a stream's
      finals beat the same audio uploaded whole by 13 WER points before this). An utterance over the limit is cut
      at its longest pause, and as a last resort hard, so no segment is ever over it.
    """
    limit = int(max_segment_s * rate)
    margin = int(MARGIN_S * rate)
    regions = detector.speech_regions(audio, min_silence_ms=int(PAUSE_S * 1000),
                                      max_region_s=max(max_segment_s - 2 * MARGIN_S, max_segment_s / 2))
    if len(regions) == 1 and len(audio) <= limit:
        return [(0, len(audio))]
    # Each utterance keeps up to `margin` of silence either side, never past the middle of a pause.
    bounds = [0] + [(end + start) // 2 for (_, end), (start, _) in zip(regions, regions[1:])] + [len(audio)]
    spans = []
    for (start, end), low, high in zip(regions, bounds, bounds[1:]):
        start, end = max(low, start - margin), min(high, end + margin)
        spans.extend((s, min(s + limit, end)) for s in range(start, end, limit))
    return spans
