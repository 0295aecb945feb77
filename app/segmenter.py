"""Where to cut an upload into model-sized segments, decided by voice activity."""

from __future__ import annotations

from .vad import SpeechDetector


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
