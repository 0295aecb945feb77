"""Estimate a word n-gram language model (interpolated Kneser-Ney) from transcript text and write it as ARPA.

    python -m recipe.lm --text data/text/train.txt --order 3 --out weights/lm.arpa.gz
    python -m recipe.lm --manifest train-clean-100.jsonl --out runs/ls/final/lm.arpa.gz   # a corpus's transcripts
    python -m recipe.lm --text data/text/train.txt --general-english 100000 --out weights/lm.arpa.gz

The recognizer re-ranks its beam's finished hypotheses with it (``model/lm.py``): the attention decoder has
only seen the sentences that were synthesised, and most of its errors are misspelt words that a word model
marks as unlikely. KenLM's ``lmplz`` would estimate the same model, but it is a C++ binary that pip cannot
install, so this small estimator writes the standard ARPA format instead; an ARPA file from KenLM (or any other
toolkit) works in its place.

Kneser-Ney in brief: the highest order counts n-grams; lower orders count how many distinct words precede an
n-gram (its *continuation* count), except for n-grams that start with ``<s>``, which nothing can precede and
which keep their plain counts. Each order subtracts an absolute discount ``D = n1 / (n1 + 2 n2)`` from every count
and gives the freed mass to the next lower order; the unigrams interpolate with a uniform distribution over the
vocabulary plus ``<unk>``, so an unseen word has a small, finite probability.

``--general-english N`` replaces that uniform floor with the frequencies of the N commonest English words
(``wordfreq``, counted over books, news, subtitles and the web): the unigram mass Kneser-Ney sets aside for words
the domain text never used then goes to real words in proportion to how common they are, instead of equally to
every string. Most of the recogniser's errors on rare words are misspellings ("octipus", "champian"); with this
floor a real rare word outscores its misspelling, which falls to ``<unk>``. Only word frequencies are used (no
sentences), so nothing of the dev/test text can leak in.

Written into a checkpoint directory under a word-LM name (``lm.arpa.gz``, ``.xz`` or plain), the file becomes that
checkpoint's LM: its ``config.json`` names it with its sha256 (``model.checkpoint.attach_word_lm``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from model.lm import BOS, EOS, UNK

from .manifest import read_manifest

NEVER = -99.0  # ARPA's log10 probability for <s>, which is never predicted

Ngram = tuple[str, ...]


def _discount(counts: Counter[Ngram]) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.75


def adjusted_counts(sentences: Iterable[list[str]], order: int) -> list[Counter[Ngram]]:
    """``counts[n]``: plain counts for the highest order and for n-grams starting with ``<s>``, continuation
    counts for the rest."""
    raw: Counter[Ngram] = Counter()
    for words in sentences:
        padded = [BOS, *words, EOS]
        for end in range(1, len(padded)):
            raw[tuple(padded[max(0, end - order + 1) : end + 1])] += 1
    counts = [Counter() for _ in range(order + 1)]
    for gram, c in raw.items():
        counts[len(gram)][gram] += c  # the highest order, and the shorter n-grams at sentence starts
    for n in range(order, 1, -1):  # each distinct left extension adds one continuation to its suffix
        for gram in counts[n]:
            suffix = gram[1:]
            if suffix[0] != BOS:
                counts[n - 1][suffix] += 1
    return counts


def estimate(
    sentences: Iterable[list[str]],
    order: int = 3,
    background: Mapping[str, float] | None = None,
    background_share: float = 0.99,
) -> list[dict[Ngram, tuple[float, float | None]]]:
    """``table[n][ngram] = (log10 p(last word | the rest), log10 backoff weight or None)`` for n = 1..order.

    ``background``: word -> frequency of a general vocabulary. The unigrams' floor becomes ``background_share`` x
    those frequencies (normalised) plus the rest spread evenly over the whole vocabulary and ``<unk>``; its words
    join the vocabulary even when the text never used them.
    """
    if order < 1:
        raise ValueError("order must be >= 1")
    counts = adjusted_counts(sentences, order)
    if not counts[1]:
        raise ValueError("no text to estimate from")
    background = {w: f for w, f in (background or {}).items() if f > 0 and w not in (BOS, EOS, UNK)}
    vocab = {g[0] for g in counts[1]} | set(background) | {EOS, UNK}
    vocab.discard(BOS)
    share = background_share if background else 0.0
    if not 0.0 <= share < 1.0:
        raise ValueError("background_share must be in [0, 1)")
    total_bg = sum(background.values())

    def floor(word: str) -> float:
        return share * background.get(word, 0.0) / total_bg + (1.0 - share) / len(vocab) if background else 1.0 / len(vocab)

    # Per order: the discount, each context's total and its number of distinct followers.
    discounts = [0.0] + [_discount(counts[n]) for n in range(1, order + 1)]
    totals: list[dict[Ngram, int]] = [defaultdict(int) for _ in range(order + 1)]
    types: list[dict[Ngram, int]] = [defaultdict(int) for _ in range(order + 1)]
    for n in range(1, order + 1):
        for gram, c in counts[n].items():
            totals[n][gram[:-1]] += c
            types[n][gram[:-1]] += 1

    def gamma(n: int, context: Ngram) -> float:
        """The mass order ``n`` leaves to order ``n - 1`` after ``context``."""
        return discounts[n] * types[n][context] / totals[n][context]

    probs: list[dict[Ngram, float]] = [{} for _ in range(order + 1)]
    for word in vocab:  # counted words get their discounted share; every word gets the floor's share
        c = counts[1].get((word,), 0)
        probs[1][(word,)] = max(c - discounts[1], 0.0) / totals[1][()] + gamma(1, ()) * floor(word)
    for n in range(2, order + 1):
        for gram, c in counts[n].items():
            lower = probs[n - 1][gram[1:]]  # every suffix of a counted n-gram is itself counted
            probs[n][gram] = max(c - discounts[n], 0.0) / totals[n][gram[:-1]] + gamma(n, gram[:-1]) * lower
    table: list[dict[Ngram, tuple[float, float | None]]] = [{} for _ in range(order + 1)]
    for n in range(1, order + 1):
        for gram, p in probs[n].items():
            backoff = math.log10(gamma(n + 1, gram)) if n < order and totals[n + 1].get(gram) else None
            table[n][gram] = (math.log10(p), backoff)
    bos_backoff = math.log10(gamma(2, (BOS,))) if order > 1 and totals[2].get((BOS,)) else None
    table[1][(BOS,)] = (NEVER, bos_backoff)
    return table


def write_arpa(table: list[dict[Ngram, tuple[float, float | None]]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        # gzip with mtime 0 and xz (no timestamp): the same text always gives the same bytes
        binary = (gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) if path.suffix == ".gz"
                  else lzma.LZMAFile(out, "wb") if path.suffix == ".xz" else out)
        with io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as f:
            f.write("\\data\\\n")
            for n in range(1, len(table)):
                f.write(f"ngram {n}={len(table[n])}\n")
            for n in range(1, len(table)):
                f.write(f"\n\\{n}-grams:\n")
                for gram in sorted(table[n]):
                    logp, backoff = table[n][gram]
                    # four decimals of log10: 0.02% of a probability, far below what moves a decision
                    f.write(f"{logp:.4f}\t{' '.join(gram)}" + (f"\t{backoff:.4f}\n" if backoff is not None else "\n"))
            f.write("\n\\end\\\n")
    return path


TRANSCRIPT_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")  # what a normalised transcript's words look like


def general_english(n_words: int) -> dict[str, float]:
    """Frequencies of the ``n_words`` commonest English words that a transcript can hold (wordfreq's large list)."""
    from wordfreq import top_n_list, word_frequency  # a recipe dependency; the server only reads the ARPA file

    listed = top_n_list("en", 2 * n_words, wordlist="large")
    words = [w for w in listed if TRANSCRIPT_WORD.fullmatch(w)][:n_words]
    return {w: word_frequency(w, "en", wordlist="large") for w in words}


def read_sentences(path: str | Path) -> list[list[str]]:
    return [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, action="append", default=[],
                    help="normalised transcripts, one sentence per line (repeatable)")
    ap.add_argument("--manifest", type=Path, action="append", default=[],
                    help="a JSONL manifest whose 'text' fields to use (repeatable)")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--general-english", type=int, default=0, metavar="N",
                    help="floor the unigrams with the frequencies of the N commonest English words (0: uniform)")
    ap.add_argument("--out", type=Path, required=True, help="ARPA file to write (.gz or .xz to compress; xz is ~25%% smaller)")
    a = ap.parse_args(argv)
    if not a.text and not a.manifest:
        ap.error("give at least one --text or --manifest")
    sentences = [s for path in a.text for s in read_sentences(path)]
    sentences += [u.text.split() for path in a.manifest for u in read_manifest(path) if u.text.strip()]
    table = estimate(sentences, a.order, general_english(a.general_english) if a.general_english else None)
    out = write_arpa(table, a.out)
    from model.checkpoint import CONFIG, LM_FILES, attach_word_lm  # torch: only here, not to estimate an LM

    if out.name in LM_FILES and (out.parent / CONFIG).is_file():
        attach_word_lm(out.parent, out)
    sizes = ", ".join(f"{len(table[n])} {n}-grams" for n in range(1, len(table)))
    print(f"{len(sentences)} sentences -> {out} ({sizes}, {out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
