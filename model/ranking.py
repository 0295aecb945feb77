"""Ranking what the beam search finished: length normalisation, and optionally whole-sequence CTC re-scoring.

The search's own score grows more negative with every token, so without normalisation short hypotheses win;
``ctc_mode="rescore"`` mixes the CTC head's likelihood of each whole hypothesis in here instead of during the
search (cheaper, weaker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ctc_prefix import IMPOSSIBLE


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    score: float  # the ranking score (length-normalised, CTC-combined when enabled)
    att_logprob: float  # sum of decoder log-probabilities, end token included
    ctc_logprob: float | None = None


@dataclass(frozen=True)
class Finished:
    """A hypothesis as the search completes it."""

    tokens: tuple[int, ...]
    score: float  # the search's own score (attention, or joint in prefix mode), not yet length-normalised
    att: float
    ctc: float | None


def length_normalised(logprob: float, length: int, alpha: float) -> float:
    """``logprob / length ** alpha``: 0 ranks by raw log-probability, 1 by the per-token average."""
    return logprob / max(length, 1) ** alpha


def rank(finished: list[list[Finished]], n_best: int, length_penalty: float, ctc_weight: float = 0.0,
         rescore_ctc: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Each utterance's ``n_best``, best first; with ``rescore_ctc`` ``(B, T, V)`` and its ``lengths``, the CTC
    likelihood of each whole hypothesis is first mixed in with ``ctc_weight``."""
    results = []
    for i, hyps in enumerate(finished):
        if rescore_ctc is not None and lengths is not None:
            ctc = ctc_scores(rescore_ctc[i, : int(lengths[i])], [h.tokens for h in hyps])
            # CTC cannot emit more labels than frames: such hypotheses rank below every possible one.
            hyps = [Finished(h.tokens, (1 - ctc_weight) * h.att + ctc_weight * c if math.isfinite(c)
                             else h.att + IMPOSSIBLE, h.att, c) for h, c in zip(hyps, ctc)]
        ranked = [Hypothesis(h.tokens, length_normalised(h.score, len(h.tokens) + 1, length_penalty), h.att, h.ctc)
                  for h in hyps]
        ranked.sort(key=lambda h: h.score, reverse=True)
        results.append(ranked[:n_best])
    return results


def ctc_scores(logprobs: torch.Tensor, seqs: list[tuple[int, ...]], blank: int = 0) -> list[float]:
    """CTC log-likelihood of each candidate transcript given one utterance's ``(T, V)`` CTC log-probabilities."""
    if not seqs or logprobs.shape[0] == 0:
        return [float("-inf")] * len(seqs)
    n, frames = len(seqs), logprobs.shape[0]
    targets = torch.tensor([tok for s in seqs for tok in s], dtype=torch.long)
    lp = logprobs.float().cpu()[:, None, :].expand(frames, n, -1)
    loss = F.ctc_loss(
        lp, targets, torch.full((n,), frames, dtype=torch.long), torch.tensor([len(s) for s in seqs]),
        blank=blank, reduction="none", zero_infinity=False,
    )
    return [-float(x) for x in loss]
