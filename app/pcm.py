"""Raw audio frames of any size -> float32 samples (a sample split across two frames is carried over).

Linear PCM (``pcm_s16le``, ``f32le``) and 8-bit G.711 (``mulaw``, ``alaw``: telephony, one byte a sample). The
G.711 values come from libsndfile, decoded once into a 256-entry table, so no hand-copied table can drift from the
standard; ``pcm_s16le`` and the G.711 codes share a scale (the codes' 16-bit values / 32768).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Encoding:
    width: int  # bytes per sample
    decode: Callable[[bytes], np.ndarray]  # whole samples -> float32


def _linear(dtype: str, scale: float) -> Encoding:
    dt = np.dtype(dtype)
    return Encoding(dt.itemsize, lambda data: np.frombuffer(data, dt).astype(np.float32) * np.float32(scale))


def _g711(subtype: str) -> Encoding:
    """Every one of the 256 codes decoded by libsndfile; a frame is then one table look-up per byte."""
    table, _ = sf.read(io.BytesIO(bytes(range(256))), format="RAW", subtype=subtype, samplerate=8000, channels=1,
                       dtype="float32")
    table = np.ascontiguousarray(table, np.float32)
    return Encoding(1, lambda data: table[np.frombuffer(data, np.uint8)])


G711_SUBTYPES: dict[str, str] = {"mulaw": "ULAW", "alaw": "ALAW"}  # our encoding names -> libsndfile's

ENCODINGS: dict[str, Encoding] = {
    "pcm_s16le": _linear("<i2", 1 / 32768),
    "f32le": _linear("<f4", 1.0),
    **{name: _g711(subtype) for name, subtype in G711_SUBTYPES.items()},
}


class PcmError(ValueError):
    """The bytes are not valid audio in the declared encoding."""


class PcmDecoder:
    def __init__(self, encoding: str) -> None:
        if encoding not in ENCODINGS:
            raise PcmError(f"unsupported encoding {encoding!r}; use one of {sorted(ENCODINGS)}")
        self._encoding = ENCODINGS[encoding]
        self._carry = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % self._encoding.width
        self._carry = data[usable:]
        samples = self._encoding.decode(data[:usable])
        if not np.isfinite(samples).all():
            raise PcmError("the audio contains NaN or infinite samples")
        return samples
