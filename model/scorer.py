"""The one interface every source of beam-search scores implements (after ESPnet's ``ScorerInterface``).

The attention decoder (:class:`~model.decoder_scorer.DecoderScorer`), the CTC prefix scorer
(:class:`~model.ctc_prefix.CTCPrefixScorer`) and word-LM fusion (:class:`~model.lm_fusion.WordLMFusion`) each keep
per-hypothesis state in the search's row order. The search asks each what extending every live row by each
candidate token adds, sums the answers with its weights, keeps the best, and tells each which rows survived with
which token. Adding a scorer changes no search code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    def extend(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """Unweighted log-score increments ``(rows, C)`` of each live row extended by each of its candidate
        ``tokens`` ``(rows, C)``; ``None`` means every token of the vocabulary (``C = V``)."""
        ...

    def select(self, rows: torch.Tensor, tokens: torch.Tensor, beams: int | None = None) -> None:
        """Row ``rows[i]`` (of the last :meth:`extend`) extended by ``tokens[i]`` becomes row ``i``; rows that are
        not named (other beams, finished utterances) are dropped. ``beams``: hypotheses per utterance from now on,
        when the search narrows or widens its beam (None: unchanged)."""
        ...
