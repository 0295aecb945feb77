"""A fixed, reproducible corrupted copy of an evaluation set: reverberation and/or noise at one SNR.

    python -m recipe.corrupt --manifest data/corpus/dev_seen.jsonl --out data/corrupt/dev_seen_noise10 --snr-db 10
    python -m recipe.corrupt --manifest data/corpus/dev_seen.jsonl --out data/corrupt/dev_seen_rt05 --rt60 0.5

Training augmentation draws a new chain per copy; an evaluation set needs the same degradation every time, so an
augmentation ablation can show what each augmentation buys in the condition it is meant for. Noise kinds cycle
through white, pink, brown and babble (other utterances of the set), so every kind is scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from model.audio import decode_audio

from .augment import convolve, make_noise, mix_at_snr, room_impulse
from .manifest import read_manifest, write_jsonl

RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble")


def corrupt_manifest(manifest: str | Path, out_dir: str | Path, snr_db: float | None = None,
                     rt60: float | None = None, seed: int = 0) -> Path:
    """Write the corrupted WAVs and ``OUT/manifest.jsonl`` (same texts and voices); returns the manifest path."""
    if snr_db is None and rt60 is None:
        raise ValueError("give --snr-db, --rt60 or both: an uncorrupted copy measures nothing")
    utts = read_manifest(manifest)
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    waves = [decode_audio(u.audio.read_bytes(), RATE)[0] for u in utts]
    rows = []
    for i, (utt, wave) in enumerate(zip(utts, waves)):
        y = wave.astype(np.float32)
        if rt60 is not None:
            y = convolve(y, room_impulse(RATE, rng, rt60))
        if snr_db is not None:
            kind = NOISE_KINDS[i % len(NOISE_KINDS)]
            others = None
            if kind == "babble":
                others = [waves[int(j)] for j in rng.choice([j for j in range(len(waves)) if j != i] or [i], size=4)]
            y = mix_at_snr(y, make_noise(kind, y.size, RATE, rng, others), snr_db)
        y = y * (0.5 / (float(np.abs(y).max()) + 1e-9))
        name = f"wav/{i:06d}.wav"
        sf.write(str(out / name), y, RATE, subtype="PCM_16")
        rows.append({"audio": name, "text": utt.text, "duration": round(y.size / RATE, 3), "voice": utt.voice})
    path = out / "manifest.jsonl"
    write_jsonl(path, rows)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--snr-db", type=float, help="add noise at this signal-to-noise ratio")
    p.add_argument("--rt60", type=float, help="reverberate with a synthetic room of this RT60 (seconds)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(corrupt_manifest(a.manifest, a.out, a.snr_db, a.rt60, a.seed))


if __name__ == "__main__":
    main()
