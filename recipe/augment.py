"""Waveform augmentation that makes synthetic speech look more like real recordings.

Each utterance copy draws its own chain: speed perturbation (tempo and pitch together, by resampling), gain, a
random microphone-like band limit, synthetic room reverberation, additive noise (white, pink, brown, hum or
babble from other utterances) at a random SNR, and optionally a telephone channel. Frequency warping (VTLP) happens in the filterbank, so it is
returned as a warp factor for the feature extractor rather than applied here.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


@dataclass(frozen=True)
class AugmentConfig:
    speed: tuple[float, float] = (0.9, 1.1)
    vtlp: tuple[float, float] = (0.88, 1.12)
    gain_db: tuple[float, float] = (-12.0, 6.0)
    p_reverb: float = 0.4
    rt60: tuple[float, float] = (0.15, 0.7)
    p_noise: float = 0.6
    snr_db: tuple[float, float] = (5.0, 30.0)
    p_band: float = 0.4
    # Silence of up to pad_s seconds before and after the speech (each side drawn separately), with probability
    # p_pad, before reverberation and noise fill it. 0 (the default) draws nothing, so earlier corpora's random
    # chains are unchanged. TTS clips start almost at once; real uploads and streams do not.
    pad_s: float = 0.0
    p_pad: float = 0.5
    # A telephone line after everything else, with probability p_telephone: 300-3400 Hz, 8 kHz, a narrowband codec
    # (G.711 mu-law or A-law, or GSM 6.10, all by libsndfile) and line noise. 0 (the default) draws nothing, so
    # earlier corpora's random chains are unchanged.
    p_telephone: float = 0.0
    line_snr_db: tuple[float, float] = (25.0, 45.0)


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    noise = np.fft.irfft(spec / freqs ** (exponent / 2), n)
    return (noise / (noise.std() + 1e-9)).astype(np.float32)


def hum(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.choice([50.0, 60.0])
    t = np.arange(n) / rate
    wave = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) for k in range(1, 6))
    wave = wave + 0.3 * colored_noise(n, 1.0, rng)
    return (wave / (wave.std() + 1e-9)).astype(np.float32)


def room_impulse(rate: int, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Exponentially decaying noise tail after a direct-path impulse: a cheap diffuse-field room model."""
    n = int(rate * rt60 * 1.2)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    delay = int(rate * rng.uniform(0.002, 0.02))
    rir = np.zeros(n + delay, dtype=np.float64)
    rir[delay:] = tail * rng.uniform(0.1, 0.5)
    rir[0] = 1.0
    return (rir / np.sqrt((rir**2).sum())).astype(np.float32)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution via a power-of-two real FFT, truncated to the input length."""
    n = 1 << (x.size + h.size - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)[: x.size].astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    p_speech = float(np.mean(speech**2)) + 1e-10
    p_noise = float(np.mean(noise**2)) + 1e-10
    return speech + noise * math.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))


def babble(n: int, others: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    for other in others:
        if other.size == 0:
            continue
        reps = int(math.ceil(n / other.size))
        seg = np.tile(other, reps)[:n]
        out += np.roll(seg, int(rng.integers(0, n))) / (seg.std() + 1e-9)
    return out


NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
TELEPHONE_RATE = 8000
TELEPHONE_CODECS = ("ULAW", "ALAW", "GSM610")  # G.711 both ways, and the GSM full-rate codec


def telephone(y: np.ndarray, rate: int, rng: np.random.Generator, line_snr_db: tuple[float, float]) -> np.ndarray:
    """``y`` as heard at the far end of a phone call: band-limited to 300-3400 Hz, noise on the line, sampled at
    8 kHz through a narrowband codec, and brought back to ``rate`` (the band above 4 kHz stays empty)."""
    x = AF.lowpass_biquad(AF.highpass_biquad(torch.from_numpy(y), rate, 300.0), rate, 3400.0)
    narrow = AF.resample(x, rate, TELEPHONE_RATE).numpy()
    kind = str(rng.choice(["white", "pink", "hum"]))
    narrow = mix_at_snr(narrow, make_noise(kind, narrow.size, TELEPHONE_RATE, rng), float(rng.uniform(*line_snr_db)))
    narrow = narrow * (float(rng.uniform(0.2, 0.9)) / (float(np.abs(narrow).max()) + 1e-9))  # the codec's input level
    buf = io.BytesIO()
    sf.write(buf, narrow.astype(np.float32), TELEPHONE_RATE, format="WAV", subtype=str(rng.choice(TELEPHONE_CODECS)))
    buf.seek(0)
    coded, _ = sf.read(buf, dtype="float32")
    return AF.resample(torch.from_numpy(coded[: narrow.size]), TELEPHONE_RATE, rate).numpy()


def make_noise(kind: str, n: int, rate: int, rng: np.random.Generator, others: list[np.ndarray] | None = None) -> np.ndarray:
    """``n`` samples of one noise kind: white/pink/brown, mains hum, or babble of ``others`` (pink without them)."""
    if kind == "babble" and others:
        return babble(n, others, rng)
    if kind == "hum":
        return hum(n, rate, rng)
    return colored_noise(n, NOISE_EXPONENTS.get(kind, 1.0), rng)


def augment(
    wave: np.ndarray, rate: int, rng: np.random.Generator, cfg: AugmentConfig, others: list[np.ndarray] | None = None
) -> tuple[np.ndarray, float]:
    """Return (augmented waveform, VTLP warp factor for the filterbank)."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    speed = round(rng.uniform(*cfg.speed), 2)  # 1% steps keep the resampling ratio small (e.g. 101/100)
    if speed != 1.0:
        # Treat the audio as if recorded at rate*speed and resample to rate: faster and higher for speed > 1.
        x = AF.resample(x, int(round(speed * 100)) * rate // 100, rate)
    if rng.random() < cfg.p_band:
        x = AF.highpass_biquad(x, rate, float(rng.uniform(60, 400)))
        x = AF.lowpass_biquad(x, rate, float(rng.uniform(3000, 7500)))
    y = x.numpy().astype(np.float32)
    if cfg.pad_s > 0 and rng.random() < cfg.p_pad:
        before, after = (int(rng.uniform(0, cfg.pad_s) * rate) for _ in range(2))
        y = np.concatenate([np.zeros(before, np.float32), y, np.zeros(after, np.float32)])
    if rng.random() < cfg.p_reverb:
        rir = room_impulse(rate, rng, float(rng.uniform(*cfg.rt60)))
        y = convolve(y, rir)
    if rng.random() < cfg.p_noise:
        kind = str(rng.choice(["white", "pink", "brown", "hum", "babble"]))
        picks = None
        if kind == "babble" and others:
            picks = [others[int(i)] for i in rng.integers(0, len(others), size=int(rng.integers(2, 6)))]
        noise = make_noise(kind, y.size, rate, rng, picks)
        y = mix_at_snr(y, noise, float(rng.uniform(*cfg.snr_db)))
    if cfg.p_telephone > 0 and rng.random() < cfg.p_telephone:
        y = telephone(y.astype(np.float32), rate, rng, cfg.line_snr_db)
    peak = float(np.abs(y).max()) + 1e-9
    target = min(10 ** (rng.uniform(*cfg.gain_db) / 20) * 0.5, 0.99)
    y = y * (target / peak)
    return y.astype(np.float32), float(rng.uniform(*cfg.vtlp))
