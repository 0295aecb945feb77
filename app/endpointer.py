"""Endpoint detection for live audio: turns per-frame speech probabilities into open and closed segments.

A segment opens at the first frame over the threshold (reaching back ``pad`` frames for the onset), and closes
once the speech probability has stayed under the lower threshold for ``endpoint`` frames; it ends ``pad`` frames
after the last speech. A segment with too little speech is dropped (a cough, a click). A segment that reaches
the model's length limit is cut where it stands and a new one opens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointConfig:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    endpoint_frames: int = 16  # trailing non-speech that closes a segment (16 x 32 ms ~ 0.5 s)
    pad_frames: int = 5  # kept before the onset and after the last speech (~ 160 ms)
    min_speech_frames: int = 8  # voiced frames a segment needs to be decoded (~ 250 ms)
    max_frames: int = 625  # the model's segment limit (20 s)


class Endpointer:
    def __init__(self, cfg: EndpointConfig) -> None:
        self.cfg = cfg
        self.start: int | None = None  # first frame of the open segment, None between segments
        self._voiced = 0  # frames over the threshold in the open segment
        self._quiet = 0  # consecutive frames under the lower threshold at its end
        self._floor = 0  # a new segment may not reach back before this frame (the previous one's end)
        self._frame = 0  # frames seen

    @property
    def frames(self) -> int:
        return self._frame

    def update(self, probs) -> list[tuple[int, int]]:
        """Consume probabilities; returns the ``(start, end)`` frame ranges of segments closed by them."""
        closed = []
        c = self.cfg
        for p in probs:
            i = self._frame
            self._frame += 1
            if self.start is None:
                if p >= c.threshold:
                    self.start = max(self._floor, i - c.pad_frames)
                    self._voiced, self._quiet = 1, 0
                continue
            if p < c.neg_threshold:
                self._quiet += 1
            else:
                self._quiet = 0
                self._voiced += p >= c.threshold
            if self._quiet >= c.endpoint_frames:
                end = min(self._frame, i + 1 - self._quiet + c.pad_frames)
                self._close(closed, end)
            elif self._frame - self.start >= c.max_frames:
                self._close(closed, self._frame)
                if self._quiet == 0:  # still talking: carry straight on in a new segment
                    self.start, self._voiced = self._frame, 0
        return closed

    def likely_close(self) -> tuple[int, int] | None:
        """The ``(start, end)`` the open segment will close with if the silence under way lasts to the endpoint:
        known as soon as ``pad`` frames of it have arrived, a third of the way to the endpoint, so its final can
        be decoded while the endpoint is still being confirmed."""
        c = self.cfg
        if self.start is None or self._quiet < c.pad_frames or self._voiced < c.min_speech_frames:
            return None
        return self.start, self._frame - self._quiet + c.pad_frames

    def finish(self) -> tuple[int, int] | None:
        """End of input: close the open segment, ``pad`` frames after its last speech (as an endpoint would) or
        at the last frame, if it holds enough speech."""
        closed: list[tuple[int, int]] = []
        if self.start is not None:
            self._close(closed, min(self._frame, self._frame - self._quiet + self.cfg.pad_frames))
        return closed[0] if closed else None

    def _close(self, closed: list[tuple[int, int]], end: int) -> None:
        if self._voiced >= self.cfg.min_speech_frames or (self._voiced and end - self.start >= self.cfg.max_frames):
            closed.append((self.start, end))
        self.start, self._floor, self._voiced, self._quiet = None, end, 0, 0
