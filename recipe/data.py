"""Precomputed filterbanks as length-bucketed training batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.tokenizer import Tokenizer


@dataclass
class Batch:
    feats: torch.Tensor  # (B, T, n_mels), zero-padded, not yet normalised
    feat_lengths: torch.Tensor
    tokens: torch.Tensor  # (B, L) token ids, pad-filled
    token_lengths: torch.Tensor
    texts: list[str]
    voices: list[str]


class FeatureSet:
    """All parts of one or more precomputed feature directories (one per manifest), memory-mapped."""

    def __init__(self, directories: str | Path | Sequence[str | Path], tokenizer: Tokenizer,
                 max_frames: int = 3000) -> None:
        dirs = [directories] if isinstance(directories, (str, Path)) else list(directories)
        self.arrays: list[np.ndarray] = []
        self.items: list[tuple[int, int, int, str, str, list[int]]] = []  # part, offset, frames, text, voice, ids
        for part in (q for d in dirs for q in sorted(Path(d).glob("part-*.npy"))):
            arr = np.load(part, mmap_mode="r")
            k = len(self.arrays)
            self.arrays.append(arr)
            for line in part.with_suffix(".jsonl").read_text().splitlines():
                row = json.loads(line)
                if 8 <= row["frames"] <= max_frames and row["text"]:
                    ids = tokenizer.encode(row["text"])
                    self.items.append((k, row["offset"], row["frames"], row["text"], row["voice"], ids))
        if not self.items:
            raise ValueError(f"{', '.join(map(str, dirs))}: no usable utterances")

    def __len__(self) -> int:
        return len(self.items)

    def features(self, i: int) -> np.ndarray:
        part, off, n = self.items[i][:3]
        return self.arrays[part][off : off + n]

    def batches(self, max_frames: int, rng: np.random.Generator | None, max_utts: int = 256) -> list[list[int]]:
        """Group similar lengths so padding stays small; ``rng`` shuffles within buckets and the batch order."""
        frames = np.array([it[2] for it in self.items])
        noise = rng.uniform(0, 1, len(frames)) * 20 if rng is not None else np.zeros(len(frames))
        order = np.argsort(frames + noise, kind="stable")
        out, cur, longest = [], [], 0
        for i in order.tolist():
            longest_next = max(longest, int(frames[i]))
            if cur and (longest_next * (len(cur) + 1) > max_frames or len(cur) >= max_utts):
                out.append(cur)
                cur, longest_next = [], int(frames[i])
            cur.append(i)
            longest = longest_next
        if cur:
            out.append(cur)
        if rng is not None:
            rng.shuffle(out)
        return out

    def collate(self, idx: list[int], pad_id: int = 0) -> Batch:
        feats = [torch.from_numpy(np.asarray(self.features(i), dtype=np.float32)) for i in idx]
        lengths = torch.tensor([f.shape[0] for f in feats])
        x = torch.zeros(len(idx), int(lengths.max()), feats[0].shape[1])
        for j, f in enumerate(feats):
            x[j, : f.shape[0]] = f
        ids = [self.items[i][5] for i in idx]
        tl = torch.tensor([len(t) for t in ids])
        tokens = torch.full((len(idx), max(1, int(tl.max()))), pad_id, dtype=torch.long)
        for j, t in enumerate(ids):
            tokens[j, : len(t)] = torch.tensor(t, dtype=torch.long)
        return Batch(x, lengths, tokens, tl, [self.items[i][3] for i in idx], [self.items[i][4] for i in idx])

    def feature_stats(self, limit: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation per mel bin over (a sample of) the training frames: the CMVN statistics."""
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(self.items), size=min(limit, len(self.items)), replace=False)
        total, sq, n = np.zeros(self.arrays[0].shape[1]), np.zeros(self.arrays[0].shape[1]), 0
        for i in pick.tolist():
            f = np.asarray(self.features(i), dtype=np.float64)
            total += f.sum(0)
            sq += (f**2).sum(0)
            n += f.shape[0]
        mean = total / n
        std = np.sqrt(np.maximum(sq / n - mean**2, 1e-8))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
