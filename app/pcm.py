"""Raw PCM frames of any size -> float32 samples (a sample split across two frames is carried over)."""

from __future__ import annotations

import numpy as np

ENCODINGS = {"pcm_s16le": (np.dtype("<i2"), 1 / 32768), "f32le": (np.dtype("<f4"), 1.0)}


class PcmError(ValueError):
    """The bytes are not valid audio in the declared encoding."""


class PcmDecoder:
    def __init__(self, encoding: str) -> None:
        if encoding not in ENCODINGS:
            raise PcmError(f"unsupported encoding {encoding!r}; use one of {sorted(ENCODINGS)}")
        self._dtype, self._scale = ENCODINGS[encoding]
        self._carry = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % self._dtype.itemsize
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], dtype=self._dtype).astype(np.float32) * np.float32(self._scale)
        if not np.isfinite(samples).all():
            raise PcmError("the audio contains NaN or infinite samples")
        return samples
