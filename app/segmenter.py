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


def plan_segments(detector: SpeechDetector, audio, rate: int, max_segment_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges to decode.

    * no speech anywhere: ``[]`` (the service answers with an empty transcript rather than decoding noise);
    * a clip that fits the model's segment limit: the whole clip, untouched, as one segment;
    * a longer one: its speech regions, cut at the longest pause whenever one would exceed the limit
      (and, as a last resort, cut hard so no segment is ever over it).
    """
    limit = int(max_segment_s * rate)
    if len(audio) <= limit:
        return [(0, len(audio))] if detector.speech_regions(audio) else []
    spans = []
    for start, end in detector.speech_regions(audio, max_region_s=max_segment_s):
        spans.extend((s, min(s + limit, end)) for s in range(start, end, limit))
    return spans
