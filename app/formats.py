"""Subtitle and plain-text renderings of a transcript (OpenAI's ``response_format`` values srt, vtt, text)."""

from __future__ import annotations

from collections.abc import Sequence

from .transcriber import SegmentText


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_srt(segments: Sequence[SegmentText]) -> str:
    cues = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
            for i, s in enumerate((s for s in segments if s.text), start=1)]
    return "\n".join(cues)


def to_vtt(segments: Sequence[SegmentText]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments if s.text]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_text(text: str) -> str:
    return text + "\n"
