"""Word-LM shallow fusion: the word language model joins the beam search at every word boundary.

Re-ranking the finished beam (``model/recognizer.py``) can only choose among hypotheses the decoder kept; a
misspelling that the decoder prefers early pushes the right spelling out of the beam before the LM sees it.
Fusion adds ``weight x ln p(word | two words before)`` to a hypothesis's score the moment the word is complete:
when the next token opens a new word (a ``▁`` piece) or ends the sentence (then ``ln p(</s> | ...)`` too). A
word's score depends only on the hypothesis's own words, so it is one lookup per live hypothesis per step, the
same for every word-opening candidate token; the rest is a broadcast.
"""

from __future__ import annotations

import torch

from .lm import BOS, EOS, NgramLM
from .tokenizer import WORD_START, Tokenizer


class WordLMFusion:
    """Per-row word state of a beam search (the words so far and the unfinished one), in the search's row order.

    A :class:`~model.scorer.Scorer`; the search weighs what it adds (``DecodeOptions.lm_fusion_weight``)."""

    def __init__(self, lm: NgramLM, tokenizer: Tokenizer, eos_id: int, word_bonus: float = 0.0) -> None:
        self.lm, self.eos_id, self.word_bonus = lm, eos_id, word_bonus
        self.device = torch.device("cpu")
        size = tokenizer.vocab_size
        self._pieces = tokenizer.pieces
        self._opens = torch.tensor([tokenizer.starts_word(i) for i in range(size)])
        self._specials = set(tokenizer.specials)
        self._memo: dict[tuple[tuple[str, ...], str], float] = {}
        self.rows: list[tuple[tuple[str, ...], str]] = []
        self._closes, self._ends = torch.zeros(0), torch.zeros(0)

    def start(self, rows: int, device: torch.device | str = "cpu") -> None:
        """``rows`` empty hypotheses; scores are returned on ``device`` (the search's)."""
        self.device = torch.device(device)
        self.rows = [((BOS,), "")] * rows
        self._closes, self._ends = self._scores(self.rows)

    def _word_logp(self, context: tuple[str, ...], word: str) -> float:
        key = (context, word)
        if key not in self._memo:
            self._memo[key] = self.lm.log_prob(word, list(context))
        return self._memo[key]

    def _scores(self, rows: list[tuple[tuple[str, ...], str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each row: what a word-opening token adds (its unfinished word, scored), and what the end token adds
        (that plus the end of the sentence). Computed once per row state, when :meth:`select` makes it."""
        closes, ends = [], []
        for context, partial in rows:
            close = 0.0
            if partial:
                close = self._word_logp(context, partial) + self.word_bonus
                context = (*context, partial)[-(self.lm.order - 1) :] if self.lm.order > 1 else ()
            closes.append(close)
            ends.append(close + self._word_logp(context, EOS))
        return torch.tensor(closes), torch.tensor(ends)

    def extend(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """``(rows, C)`` LM log-probability (plus word bonus) that extending each row by each of its candidate
        ``tokens`` ``(rows, C)`` completes; ``None``: every token. Zero where no word completes."""
        if tokens is None:
            tokens = torch.arange(len(self._pieces)).expand(len(self.rows), -1)
        tokens_cpu = tokens.cpu()
        opens = self._opens[tokens_cpu]
        out = torch.where(opens, self._closes[:, None], 0.0)
        out = torch.where(tokens_cpu == self.eos_id, self._ends[:, None], out)
        return out.to(self.device)

    def select(self, rows: torch.Tensor, tokens: torch.Tensor, beams: int | None = None) -> None:
        """Row ``rows[i]`` extended by ``tokens[i]`` becomes row ``i`` (rows are independent: ``beams`` is not needed)."""
        kept = []
        for r, tok in zip(rows.tolist(), tokens.tolist()):
            context, partial = self.rows[r]
            piece = self._pieces[tok]
            if tok in self._specials:
                pass
            elif piece.startswith(WORD_START):
                if partial:
                    context = (*context, partial)[-(self.lm.order - 1) :] if self.lm.order > 1 else ()
                partial = piece[len(WORD_START) :]
            else:
                partial += piece
            kept.append((context, partial))
        self.rows = kept
        self._closes, self._ends = self._scores(kept)
