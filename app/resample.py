"""Resampling a live stream chunk by chunk with torchaudio, seamlessly.

Resampling each chunk on its own would zero-pad both of its edges and click at every boundary. Instead we keep
a margin of input on each side of the part we emit, so every output sample sees the same neighbourhood it
would see if the whole stream were resampled at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.transforms as T

ROLLOFF, FILTER_WIDTH = 0.99, 6  # torchaudio's defaults, which fix how far its sinc kernel reaches


class StreamResampler:
    def __init__(self, source_rate: int, target_rate: int = 16000) -> None:
        g = math.gcd(source_rate, target_rate)
        self.step_in, self.step_out = source_rate // g, target_rate // g
        self.identity = source_rate == target_rate
        self._resample = T.Resample(source_rate, target_rate, lowpass_filter_width=FILTER_WIDTH, rolloff=ROLLOFF)
        reach = math.ceil(FILTER_WIDTH * self.step_in / (min(self.step_in, self.step_out) * ROLLOFF)) + 1
        self._margin = math.ceil(reach / self.step_in) * self.step_in  # whole input periods, so outputs align
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]
        self._done = 0  # absolute input index up to which output has been emitted (a multiple of step_in)
        self._total = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self.identity:
            return samples.astype(np.float32, copy=False)
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        self._total += len(samples)
        ready = (self._total - self._margin) // self.step_in * self.step_in
        if ready <= self._done:
            return np.zeros(0, np.float32)
        out = self._emit(self._done, ready, min(self._total, ready + self._margin))
        self._done = ready
        self._trim()
        return out

    def flush(self) -> np.ndarray:
        """Emit the rest at the end of the stream (the true end, zero-padded as a whole-signal resample is)."""
        if self.identity or self._done >= self._total:
            return np.zeros(0, np.float32)
        out = self._emit(self._done, self._total, self._total)
        self._done = self._total
        return out

    def _emit(self, start: int, stop: int, window_end: int) -> np.ndarray:
        window_start = max(0, start - self._margin)
        window = self._buf[window_start - self._buf_start: window_end - self._buf_start]
        with torch.inference_mode():
            full = self._resample(torch.from_numpy(np.ascontiguousarray(window))).numpy()
        first = (start - window_start) // self.step_in * self.step_out
        count = math.ceil((stop - start) * self.step_out / self.step_in)
        return full[first: first + count].astype(np.float32, copy=False)

    def _trim(self) -> None:
        keep_from = max(0, self._done - self._margin)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
