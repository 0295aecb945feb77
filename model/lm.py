"""A word n-gram language model read from an ARPA file, for re-ranking the beam's finished hypotheses.

The attention decoder is itself a language model, but only of the sentences it was trained on; a word model
estimated from more text (``recipe/lm.py``, or KenLM, for a deployment's own domain) marks misspelt and
unlikely words. The recognizer adds ``lm_weight`` x the hypothesis's log-probability under this model to its
decoder/CTC score and keeps the best.
"""

from __future__ import annotations

import gzip
import lzma
import math
from pathlib import Path

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class ArpaError(ValueError):
    """The file is not a readable ARPA language model."""


class NgramLM:
    """Backoff n-gram scoring: ``p(w | h)`` is the stored value when ``h w`` was seen, otherwise
    ``backoff(h) * p(w | h minus its first word)``."""

    def __init__(self, entries: dict[str, tuple[float, float]], order: int, path: Path | None = None) -> None:
        self._entries = entries  # "w1 w2 w3" -> (log10 p, log10 backoff)
        self.order, self.path = order, path
        if UNK not in entries:
            raise ArpaError(f"{path}: the model has no {UNK} unigram, so unseen words could not be scored")

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        path = Path(path)
        opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
        entries: dict[str, tuple[float, float]] = {}
        order = n = 0  # n: the order of the section being read (0 outside the n-gram sections)
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("\\"):
                        n = int(line[1:].split("-")[0]) if line.endswith("-grams:") else 0
                        order = max(order, n)
                    elif n and line:  # log10 p, the n words, an optional log10 backoff
                        parts = line.split()
                        backoff = float(parts[n + 1]) if len(parts) > n + 1 else 0.0
                        entries[" ".join(parts[1 : n + 1])] = (float(parts[0]), backoff)
        except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, ValueError, IndexError) as e:
            raise ArpaError(f"{path}: not a readable ARPA file ({e})") from e
        if not order:
            raise ArpaError(f"{path}: no n-gram sections")
        return cls(entries, order, path)

    def _log10(self, words: list[str]) -> float:
        """log10 p(words[-1] | words[:-1]), the context already cut to order - 1 words."""
        total = 0.0
        while True:
            entry = self._entries.get(" ".join(words))
            if entry is not None:
                return total + entry[0]
            if len(words) == 1:
                return total + self._entries[UNK][0]
            context = self._entries.get(" ".join(words[:-1]))
            if context is not None:
                total += context[1]
            words = words[1:]

    def log_prob(self, word: str, context: list[str]) -> float:
        """Natural-log p(word | context), the context being the preceding words (``<s>`` first at a start)."""
        return self._log10([*context, word][-self.order :]) * LN10

    def score(self, text: str) -> float:
        """Natural-log probability of the sentence ``text`` (words split on spaces), end of sentence included."""
        history = [BOS]
        total = 0.0
        for word in [*text.split(), EOS]:
            history = [*history, word][-self.order :]
            total += self._log10(history)
        return total * LN10

    def lists_sentence(self, text: str) -> bool:
        """Whether every highest-order n-gram of ``text`` (with sentence markers) is an entry of its own.

        An unpruned LM lists every n-gram of its training text, so this is true for each training sentence
        (and, rarely, for a sentence made only of n-grams from others): the way to keep a model's training text
        out of new dev/test sets when only its LM survives.
        """
        words = [BOS, *text.split(), EOS]
        n = min(self.order, len(words))
        return all(" ".join(words[i : i + n]) in self._entries for i in range(len(words) - n + 1))
