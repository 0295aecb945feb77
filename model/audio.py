"""Bytes or files -> mono float32 audio at the model's sample rate, in memory bounded by the audio we accept.

An upload is untrusted: a 500 KB FLAC can declare hours of 8-channel audio, and a header can lie. So the
container's declared length is checked before anything is decoded, the audio is then read, downmixed and
resampled a block at a time, and reading stops as soon as the limit is passed. Peak memory follows the
allowed audio, not what the file claims or holds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from .resample import SAMPLE_RATES, StreamResampler

BLOCK_SECONDS = 2.0  # input read per step: small enough to stop early, large enough to cost little per call
UNKNOWN_LENGTH = 2**62  # libsndfile's "frames" for a stream of unknown length is near 2**63


class AudioError(ValueError):
    """The input is not audio we can use; the message says why, in words a client can act on."""


class AudioTooLong(AudioError):
    """The audio is (or declares itself) longer than the caller allows."""

    def __init__(self, seconds: float, limit: float, declared: bool = False) -> None:
        what = f"declares {seconds:.1f} s" if declared else f"is over {limit:g} s long"
        super().__init__(f"the audio {what}; the limit is {limit:g} s")
        self.seconds, self.limit = seconds, limit


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def decode_audio(source: bytes | str | Path, target_rate: int = 16000,
                 max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/MP3 (anything libsndfile reads); returns (mono float32 at ``target_rate``, source rate).

    With ``max_seconds``, audio longer than that raises :class:`AudioTooLong` after at most one block beyond the
    limit has been read. Every decoding failure, memory included, is an :class:`AudioError`."""
    if isinstance(source, (bytes, bytearray)) and len(source) == 0:
        raise AudioError("empty file")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with sf.SoundFile(handle) as f:
            return _read_bounded(f, target_rate, max_seconds), f.samplerate
    except AudioError:
        raise
    except MemoryError as e:
        raise AudioError("the audio is too large to decode") from e
    except Exception as e:  # noqa: BLE001 - libsndfile, its codecs and the resampler fail in many ways
        raise AudioError(f"could not decode audio: {e}") from e


def _read_bounded(f: sf.SoundFile, target_rate: int, max_seconds: float | None) -> np.ndarray:
    rate = f.samplerate
    low, high = SAMPLE_RATES
    if not low <= rate <= high:
        raise AudioError(f"unsupported sample rate {rate} Hz; accepted: {low}-{high} Hz")
    if max_seconds is not None and 0 < f.frames < UNKNOWN_LENGTH and f.frames / rate > max_seconds:
        raise AudioTooLong(f.frames / rate, max_seconds, declared=True)
    limit = None if max_seconds is None else int(max_seconds * rate)
    resampler, pieces, read = StreamResampler(rate, target_rate), [], 0
    for block in f.blocks(blocksize=int(BLOCK_SECONDS * rate), dtype="float32", always_2d=True):
        read += len(block)
        if limit is not None and read > limit:
            raise AudioTooLong(read / rate, max_seconds)
        mono = to_mono(block)
        if not np.isfinite(mono).all():
            raise AudioError("the audio contains NaN or infinite samples")
        pieces.append(resampler.push(mono))
    if read == 0:
        raise AudioError("the audio has no samples")
    pieces.append(resampler.flush())
    return np.concatenate(pieces)
