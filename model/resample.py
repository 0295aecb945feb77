"""Resampling in bounded cost: whole signals and live streams, with torchaudio's windowed-sinc filter.

A sinc resampler from rate ``a`` to ``b`` works with the reduced ratio ``a/g : b/g`` (``g = gcd(a, b)``); its
filter bank has ``b/g`` phases of ``~a/g`` taps each. For the usual rates that is small (44.1 kHz -> 16 kHz is
441 : 160), but a rate coprime with the target (8001 Hz) asks for 16000 phases of 8000 taps: gigabytes, and
seconds of work. So a ratio whose terms pass :data:`MAX_RATIO_TERM` is replaced by the nearest fraction whose
terms do not; the speed error this makes is a few parts per million, far below what anyone can hear, and the
cost of every rate is bounded by that of the worst small ratio. Filters are cached per ratio, a few at a time.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torchaudio.transforms as T

ROLLOFF, FILTER_WIDTH = 0.99, 6  # torchaudio's defaults, which fix how far its sinc kernel reaches
MAX_RATIO_TERM = 1000  # bounds the filter bank (phases x taps) and the work per output sample
SAMPLE_RATES = (8000, 192000)  # the source rates we accept, inclusive: telephony to studio


def ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    """``(input_step, output_step)``: the reduced ratio of the two rates, approximated when its terms are large."""
    exact = Fraction(target_rate, source_rate)
    limit = MAX_RATIO_TERM
    approx = exact.limit_denominator(limit)
    while max(approx.numerator, approx.denominator) > MAX_RATIO_TERM:
        limit //= 2
        approx = exact.limit_denominator(limit)
    return approx.denominator, approx.numerator


@lru_cache(maxsize=8)
def _filter(step_in: int, step_out: int) -> T.Resample:
    return T.Resample(step_in, step_out, lowpass_filter_width=FILTER_WIDTH, rolloff=ROLLOFF)


def prepare(source_rate: int, target_rate: int) -> None:
    """Build (and cache) the filter for this pair of rates now, e.g. on a worker thread before a stream starts."""
    if source_rate != target_rate:
        _filter(*ratio(source_rate, target_rate))


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """The whole signal at ``target_rate`` (float32)."""
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    with torch.inference_mode():
        out = _filter(*ratio(source_rate, target_rate))(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))
    return out.numpy()


class StreamResampler:
    """Resamples a signal that arrives in pieces, seamlessly.

    Resampling each piece on its own would zero-pad both of its edges and click at every boundary. Instead we
    keep a margin of input on each side of the part we emit, so every output sample sees the same neighbourhood
    it would see if the whole signal were resampled at once.
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.step_in, self.step_out = ratio(source_rate, target_rate)
        self.identity = self.step_in == self.step_out
        self._resample = None if self.identity else _filter(self.step_in, self.step_out)
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
        """Emit the rest at the end of the signal (the true end, zero-padded as a whole-signal resample is)."""
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
