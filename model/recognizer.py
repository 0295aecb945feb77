"""The entry point the service and the CLI call: waveforms in, transcripts out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .alignment import FrameClock, WordTiming, align_words
from .checkpoint import Checkpoint, load_checkpoint
from .decoding import DecodeOptions, Hypothesis, beam_search
from .device import INT8, autocast, pick_device, pick_dtype, quantize_int8
from .features import make_features, make_normalizer
from .lm import NgramLM
from .lm_fusion import WordLMFusion


@dataclass(frozen=True)
class NBest:
    text: str
    score: float


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    score: float
    n_best: tuple[NBest, ...]
    duration: float
    words: tuple[WordTiming, ...] = ()  # the best hypothesis's words with times (needs a CTC head)


def pad_batch(waveforms: Sequence[np.ndarray | torch.Tensor], device: torch.device,
              min_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros; inputs shorter than ``min_samples`` (one encoder frame) are padded up to it (they
    decode to silence)."""
    tensors = [torch.as_tensor(w, dtype=torch.float32).flatten() for w in waveforms]
    lengths = torch.tensor([max(t.numel(), min_samples) for t in tensors])
    batch = torch.zeros(len(tensors), int(lengths.max()))
    for i, t in enumerate(tensors):
        batch[i, : t.numel()] = t
    return batch.to(device), lengths.to(device)


class Recognizer:
    """A loaded checkpoint on one device, ready to transcribe batches of mono float waveforms at
    :attr:`sample_rate` (the checkpoint's; 16 kHz for the shipped model).

    The facts callers need about the input live here: :attr:`sample_rate`, :attr:`max_segment_seconds` and
    :attr:`min_samples`."""

    # Longest input decoded in one piece; the training data are single sentences of a few seconds, so longer
    # audio is split at pauses by the caller (the service's VAD).
    max_segment_seconds: float = 20.0

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, lm: NgramLM | None = None,
                 int8: bool = False) -> None:
        self.ckpt = ckpt
        self.lm = lm
        self.device, self.dtype = device, dtype
        self.model = ckpt.model.to(device).eval()
        if int8:
            self.model = quantize_int8(self.model)
        self.precision = INT8 if int8 else str(dtype).removeprefix("torch.")  # what the logs and /healthz name
        self.tokenizer = ckpt.tokenizer
        self.features = make_features(ckpt.features).to(device)
        self.cmvn = make_normalizer(ckpt.cmvn_kind, ckpt.cmvn_mean, ckpt.cmvn_std).to(device)
        self.name = ckpt.name
        self.clock = FrameClock.for_features(ckpt.features, self.model.subsampling_rate(),
                                             self.model.receptive_field())

    @classmethod
    def load(cls, weights: str | Path, device: str = "auto", dtype: str = "auto",
             lm: str | Path | None = "auto") -> "Recognizer":
        """``lm``: an ARPA file, ``"auto"`` for the checkpoint's own if it has one (`Checkpoint.lm`), None for none."""
        dev = pick_device(device)
        ckpt = load_checkpoint(weights, dev)
        if lm == "auto":
            lm = ckpt.lm
        return cls(ckpt, dev, pick_dtype(dtype, dev), NgramLM.load(lm) if lm else None, int8=dtype == INT8)

    @property
    def sample_rate(self) -> int:
        """Samples per second of the waveforms :meth:`transcribe` takes (the features' rate in the checkpoint)."""
        return self.ckpt.features.sample_rate

    @property
    def min_samples(self) -> int:
        """The shortest waveform that still gives one encoder frame (1360 samples, 85 ms, for the shipped model):
        one filterbank window plus a hop for each further frame of the front-end's receptive field."""
        return self.ckpt.features.samples_for(self.model.receptive_field())

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encoder output ``(B, T, d)``, its lengths, and CTC log-probabilities (None without a CTC head)."""
        wav, lengths = pad_batch(waveforms, self.device, self.min_samples)
        feats, feat_lengths = self.features(wav, lengths)
        feats = self.cmvn(feats, feat_lengths)
        with autocast(self.device, self.dtype):
            memory, enc_lengths = self.model.encoder(feats, feat_lengths)
            head = self.model.ctc_head
            ctc = head(memory).float().log_softmax(-1) if head is not None else None
        return memory, enc_lengths, ctc

    @torch.inference_mode()
    def transcribe(
        self, waveforms: Sequence[np.ndarray | torch.Tensor], options: DecodeOptions | None = None
    ) -> list[TranscriptionResult]:
        """Transcribe a batch together; each result is independent of what else was in the batch."""
        if not waveforms:
            return []
        opts = options or DecodeOptions()
        rerank = self.lm is not None and opts.lm_weight > 0 and opts.beam_size > 1
        fusion = None
        if self.lm is not None and opts.lm_fusion_weight > 0 and opts.beam_size > 1:
            fusion = WordLMFusion(self.lm, self.tokenizer, self.model.cfg.eos_id, opts.lm_fusion_bonus)
        memory, lengths, ctc = self.encode(waveforms)
        if opts.ctc_greedy and ctc is not None:
            return [self._best_path(logp[: int(n)], len(wav) / self.sample_rate)
                    for wav, logp, n in zip(waveforms, ctc, lengths)]
        with autocast(self.device, self.dtype):
            nbest = beam_search(self.model, memory, lengths, opts, ctc, fusion, keep=opts.beam_size if rerank else None)
        results = []
        for i, (wav, hyps) in enumerate(zip(waveforms, nbest)):
            scored = [(self.tokenizer.decode(h.tokens), h.score, h) for h in hyps]
            if rerank:
                scored = self._rerank(scored, opts.lm_weight)[: opts.n_best]
            hyps = [h for _, _, h in scored]
            entries = tuple(NBest(text, score) for text, score, _ in scored)
            best = entries[0] if entries else NBest("", float("-inf"))
            duration = len(wav) / self.sample_rate
            words = self._words(ctc[i, : int(lengths[i])], hyps[0].tokens, duration) if ctc is not None and hyps else ()
            results.append(TranscriptionResult(best.text, best.score, entries, duration, words))
        return results

    def _best_path(self, ctc: torch.Tensor, duration: float) -> TranscriptionResult:
        """The most likely frame labels, repeats merged and blanks dropped; its score is their log-probability."""
        best, ids = ctc.max(-1)
        tokens = torch.unique_consecutive(ids).tolist()
        text = self.tokenizer.decode(tokens)
        score = float(best.sum())
        return TranscriptionResult(text, score, (NBest(text, score),), duration)

    def _rerank(self, scored: list[tuple[str, float, Hypothesis]], weight: float) -> list[tuple[str, float, Hypothesis]]:
        """Add the word model's log-probability to each finished hypothesis's score; best first."""
        rescored = [(text, score + weight * self.lm.score(text), h) for text, score, h in scored]
        return sorted(rescored, key=lambda item: item[1], reverse=True)

    def _words(self, ctc: torch.Tensor, tokens: tuple[int, ...], duration: float) -> tuple[WordTiming, ...]:
        cfg = self.model.cfg
        return align_words(ctc, tokens, self.tokenizer, self.clock, cfg.pad_id, duration)
