"""Bytes or files -> mono float32 audio at the model's sample rate (soundfile decodes, torchaudio resamples)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioError(ValueError):
    """The input is not audio we can use; the message says why, in words a client can act on."""


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    return AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, target).numpy()


def decode_audio(source: bytes | str | Path, target_rate: int = 16000) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/MP3 (anything libsndfile reads); returns (mono float32 at ``target_rate``, source rate)."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    if isinstance(source, (bytes, bytearray)) and len(source) == 0:
        raise AudioError("empty file")
    try:
        samples, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"could not decode audio: {e}") from e
    mono = to_mono(samples)
    if mono.size == 0:
        raise AudioError("the audio has no samples")
    if not np.isfinite(mono).all():
        raise AudioError("the audio contains NaN or infinite samples")
    return resample(mono, rate, target_rate).astype(np.float32, copy=False), rate
