"""Precompute (augmented) filterbanks for training: ``python -m recipe.features --manifest M.jsonl --out DIR``.

Training on this CPU is compute-bound, so features are computed once, stored as float16 memory-mapped arrays
(``part-K.npy`` plus ``part-K.jsonl`` with offsets and transcripts), and read back for free every epoch. Copy 0
of each utterance is clean; copies 1.. are each augmented with their own random chain (see ``recipe.augment``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from model.audio import to_mono
from model.resample import resample
from model.config import FeatureConfig
from model.features import FilterbankFeatures

from .augment import AugmentConfig, augment
from .manifest import Utterance, read_manifest


def load_wave(path: Path, rate: int) -> np.ndarray:
    samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(to_mono(samples), sr, rate)


def _work(args: tuple[int, list[Utterance], str, int, int, bool, AugmentConfig]) -> int:
    part, utts, out_dir, copies, seed, do_augment, aug_cfg = args
    torch.set_num_threads(1)
    out = Path(out_dir)
    done_marker = out / f"part-{part:03d}.done"
    if done_marker.exists():
        return len(utts)
    cfg = FeatureConfig()
    fbank = FilterbankFeatures(cfg)
    rng = np.random.default_rng(seed * 1000 + part)
    chunks, index, offset, recent = [], [], 0, []
    for utt in utts:
        wave = load_wave(utt.audio, cfg.sample_rate)
        for c in range(copies):
            warp = 1.0
            x = wave
            if c > 0 and do_augment:
                x, warp = augment(wave, cfg.sample_rate, rng, aug_cfg, recent)
            feats, n = fbank(torch.from_numpy(x)[None], torch.tensor([x.size]), torch.tensor([warp]) if warp != 1.0 else None)
            f = feats[0, : int(n[0])].numpy().astype(np.float16)
            chunks.append(f)
            index.append({"offset": offset, "frames": f.shape[0], "text": utt.text, "voice": utt.voice, "copy": c,
                          "audio": str(utt.audio)})
            offset += f.shape[0]
        recent = (recent + [wave])[-20:]
    np.save(out / f"part-{part:03d}.npy", np.concatenate(chunks) if chunks else np.zeros((0, cfg.n_mels), np.float16))
    (out / f"part-{part:03d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    done_marker.touch()
    return len(utts)


def prepare(manifest: str | Path, out_dir: str | Path, copies: int = 2, jobs: int = 2, seed: int = 0,
            do_augment: bool = True, part_size: int = 500, aug: AugmentConfig = AugmentConfig()) -> Path:
    """Resumable: finished parts are kept, unfinished ones are redone."""
    utts = read_manifest(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(i, utts[s : s + part_size], str(out), copies, seed, do_augment, aug)
             for i, s in enumerate(range(0, len(utts), part_size))]
    with mp.get_context("spawn").Pool(jobs) as pool, tqdm(total=len(utts), desc=f"features {Path(manifest).name}") as bar:
        for n in pool.imap_unordered(_work, tasks):
            bar.update(n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--copies", type=int, default=2, help="copies per utterance: one clean, the rest augmented")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    prepare(a.manifest, a.out, a.copies, a.jobs, a.seed, not a.no_augment)


if __name__ == "__main__":
    main()
