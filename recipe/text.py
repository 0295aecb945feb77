"""Build the sentence lists for the synthetic corpus.

Sources are local and offline: the Debian ``fortunes`` collections (prose
quips, quotes, definitions) and, optionally, rendered man pages.  Records that
look like pictures, code, tables or verse are dropped whole, because joining
their lines produces text nobody would say.  Sentences are normalised to the
transcript form, de-duplicated, shuffled with a fixed seed and split *by
sentence* so that no dev/test sentence is ever heard in training.

    python -m recipe.text --out data/text

The released models' text (stage 8 on) comes back byte for byte, on any machine with the listed
pages, from the committed lists in ``recipe/text_sources``:

    python -m recipe.text --out data/text --held-out recipe/text_sources \
        --man-page-list recipe/text_sources/man_pages.txt --extra-man-pages 504
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.lm import NgramLM
from recipe.normalize import normalize_text, word_count

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Pictures, not prose; "off" holds the offensive collection.
SKIP_FORTUNE_FILES = {"art", "ascii-art", "off"}
MIN_WORDS, MAX_WORDS = 3, 25

# Words before a full stop that do not end a sentence.
_NON_FINAL = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "mt", "gen", "capt",
    "lt", "sgt", "col", "rev", "no", "vol", "fig", "inc", "ltd", "co", "corp", "ave",
    "gov", "sen", "rep", "dept", "approx", "jan", "feb", "aug", "sept", "oct", "nov", "dec",
}
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(]*[A-Z0-9])")


# --------------------------------------------------------------------------- fortunes


def fortune_files(root: Path = FORTUNE_DIR) -> list[Path]:
    """Prose fortune collections: skips index files, pictures and the offensive folder."""
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() or p.suffix in {".dat", ".u8"} or p.name in SKIP_FORTUNE_FILES or p.is_symlink():
            continue
        out.append(p)
    return out


def fortune_records(path: Path) -> Iterator[str]:
    """Yield each fortune (text between '%' lines) of one collection."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for rec in re.split(r"^%\s*$", text, flags=re.M):
        if rec.strip():
            yield rec


def _strip_attribution(lines: list[str]) -> list[str]:
    """Drop the trailing '-- Author, Title' block: it is not part of the spoken text."""
    for i, line in enumerate(lines):
        s = line.strip()
        if i > 0 and (s.startswith("--") or s.startswith("- ") or s.startswith("\u2014")):
            return lines[:i]
    return lines


def _looks_like_layout(lines: list[str]) -> bool:
    """True for ASCII art, code, tables and verse, whose lines cannot be joined into prose."""
    body = "\n".join(lines)
    if not body.strip():
        return True
    chars = [c for c in body if not c.isspace()]
    symbols = sum(not (c.isalnum() or c in ".,;:!?'\"-()") for c in chars)
    if symbols > 0.08 * len(chars):
        return True
    nonempty = [ln for ln in lines if ln.strip()]
    # Columns or centred drawings: wide internal gaps.
    if sum(bool(re.search(r"\S\s{4,}\S", ln)) for ln in nonempty) >= 1:
        return True
    if len(nonempty) >= 3:
        mean_len = sum(len(ln.strip()) for ln in nonempty) / len(nonempty)
        # Verse and lists: many short lines.
        if mean_len < 42:
            return True
        # Verse: most lines start with a capital after a line that does not end a sentence.
        caps_cont = sum(
            1
            for a, b in zip(nonempty, nonempty[1:])
            if not re.search(r"[.!?:]['\")]*\s*$", a) and b.strip()[:1].isupper()
        )
        if caps_cont >= 0.6 * (len(nonempty) - 1):
            return True
    # Dialogue scripts and code: many lines begin with a label or an indented block.
    if sum(bool(re.match(r"\s*[A-Za-z ]{1,20}:\s", ln)) for ln in nonempty) >= 2:
        return True
    return False


def split_sentences(paragraph: str) -> list[str]:
    """Split prose on sentence-final punctuation, not on 'Mr.' or initials."""
    parts = _SENT_END.split(paragraph)
    out: list[str] = []
    for part in parts:
        if out:
            prev = out[-1]
            m = re.search(r"(\w+)\.['\")\]]*$", prev)
            if m and (m.group(1).lower() in _NON_FINAL or (len(m.group(1)) == 1 and m.group(1).isupper())):
                out[-1] = prev + " " + part
                continue
        out.append(part)
    return [p.strip() for p in out if p.strip()]


def record_sentences(record: str) -> list[str]:
    """Prose sentences of one fortune, or [] when it is not prose."""
    lines = record.replace("\t", "    ").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    lines = _strip_attribution(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or _looks_like_layout(lines):
        return []
    paragraphs = re.split(r"\n\s*\n", "\n".join(lines))
    out: list[str] = []
    for para in paragraphs:
        joined = re.sub(r"\s+", " ", para).strip()
        # A word hyphenated across a line break: "some- thing" -> "something".
        joined = re.sub(r"(\w)- (\w)", r"\1\2", joined)
        out.extend(split_sentences(joined))
    return out


def fortune_sentences(paths: Iterable[Path] | None = None) -> Iterator[str]:
    """Every raw prose sentence of the given fortune collections (default: Debian's, ``fortune_files()``)."""
    for path in fortune_files() if paths is None else paths:
        for rec in fortune_records(path):
            yield from record_sentences(rec)


# --------------------------------------------------------------------------- man pages


def _render_man(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="2000", MAN_KEEP_FORMATTING="0", LC_ALL="C.UTF-8")
    try:
        r = subprocess.run(
            ["man", "-P", "cat", "-l", str(path)], capture_output=True, env=env, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout.decode("utf-8", errors="replace")


def man_pages_sample(max_pages: int, seed: int, per_family: int = 40) -> list[Path]:
    """Seeded sample of section-1 pages, at most `per_family` per command family.

    One family (gcloud-*) is over 90% of the pages here; capping keeps the text varied.
    """
    pages = sorted(Path("/usr/share/man/man1").glob("*.gz"))
    random.Random(seed).shuffle(pages)
    taken: dict[str, int] = {}
    out: list[Path] = []
    for p in pages:
        family = re.split(r"[-_.]", p.name, maxsplit=1)[0]
        if taken.get(family, 0) >= per_family:
            continue
        taken[family] = taken.get(family, 0) + 1
        out.append(p)
        if len(out) >= max_pages:
            break
    return out


def listed_man_pages(list_file: Path, root: Path = Path("/usr/share/man/man1")) -> tuple[list[Path], list[str]]:
    """The pages named in ``list_file`` (one file name per line, in order) and the names missing here.

    A seeded sample of the machine's pages moves whenever a package adds or drops one page, and with it
    every sentence of the corpus; a committed list keeps the text the same on any machine with those pages.
    """
    names = read_lines(list_file)
    present = [root / n for n in names if (root / n).is_file()]
    missing = [n for n in names if not (root / n).is_file()]
    return present, missing


def man_sentences(pages: list[Path], jobs: int = 2) -> Iterator[str]:
    """Prose sentences from rendered man pages (rendered with long lines: no wrapping to undo)."""
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        for text in ex.map(_render_man, pages):
            for line in text.splitlines():
                s = line.strip()
                # Prose paragraphs only: option lists and synopses are short or start with symbols.
                if len(s) < 40 or not s[:1].isupper() or s.endswith(":"):
                    continue
                yield from split_sentences(re.sub(r"\s+", " ", s))


# --------------------------------------------------------------------------- corpus


def clean_sentences(raw: Iterable[str], min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Normalise, length-filter and de-duplicate, keeping first-seen order."""
    seen: set[str] = set()
    out: list[str] = []
    for s in raw:
        n = normalize_text(s)
        if n is None or not (min_words <= word_count(n) <= max_words) or n in seen:
            continue
        seen.add(n)
        out.append(n)
    return out


def split_corpus(
    sentences: list[str],
    n_dev: int,
    n_test: int,
    seed: int,
    *,
    seen: Collection[str] = frozenset(),
    strata: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Shuffle (seeded) unique sentences and cut them into disjoint train/dev/test lists.

    Dev and test come only from sentences not in ``seen``: text an earlier model was trained on, so that a
    model fine-tuned from it is never scored on what it heard. ``strata`` (sentence -> source) keeps each
    source's share of dev/test at its share of all sentences, as far as the unseen sentences allow, so the
    held-out sets read like the corpus and not like whichever source happens to be least seen.
    """
    uniq = sorted(set(sentences))
    random.Random(seed).shuffle(uniq)
    n_held = n_dev + n_test
    candidates = [s for s in uniq if s not in seen]
    if n_held >= len(candidates):
        raise ValueError(f"only {len(candidates)} unseen sentences for dev {n_dev} + test {n_test}")
    held: list[str] = []
    if strata:
        shares = Counter(strata.get(s, "") for s in uniq)
        quota = {source: round(n_held * n / len(uniq)) for source, n in shares.items()}
        taken: Counter[str] = Counter()
        for s in candidates:
            source = strata.get(s, "")
            if taken[source] < quota[source]:
                held.append(s)
                taken[source] += 1
    chosen = set(held)
    held += [s for s in candidates if s not in chosen][: max(0, n_held - len(held))]
    held = sorted(held[:n_held])  # quotas may round one or two over
    random.Random(seed + 1).shuffle(held)  # mix the strata between dev and test
    held_set = set(held)
    train = [s for s in uniq if s not in held_set]
    return train, held[:n_dev], held[n_dev:]


def pinned_split(
    sentences: list[str], dev: list[str], test: list[str], seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Train is every sentence but the given dev/test ones, in ``split_corpus``'s seeded order.

    With the pool and the held-out lists of an earlier run this gives back that run's train list exactly;
    with another pool it still never trains on a held-out sentence.
    """
    if set(dev) & set(test):
        raise ValueError("dev and test share sentences")
    held = set(dev) | set(test)
    uniq = sorted(set(sentences))
    random.Random(seed).shuffle(uniq)
    return [s for s in uniq if s not in held], list(dev), list(test)


def read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def train_only(train: list[str], held: Collection[str], extra: Iterable[str]) -> list[str]:
    """``train`` plus the ``extra`` sentences that are neither in it nor held out, in order.

    Extra text grows the training set without moving a single dev/test sentence, so results stay
    comparable with models trained before it was added.
    """
    taken = set(train) | set(held)
    out = list(train)
    for s in extra:
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--man-pages", type=int, default=600, help="also mine up to this many man pages (0: fortunes only)"
    )
    ap.add_argument(
        "--seen",
        type=Path,
        help="sentences an earlier model was trained on (one per line): kept out of dev/test, so a model "
        "fine-tuned from it (recipe.train --init) is scored only on text neither has heard",
    )
    ap.add_argument(
        "--seen-lm",
        type=Path,
        help="the word LM (ARPA) estimated from an earlier model's training text: every sentence it lists "
        "in full (NgramLM.lists_sentence) is kept out of dev/test, like --seen",
    )
    ap.add_argument(
        "--extra-man-pages",
        type=int,
        default=0,
        help="mine this many further man pages (after the --man-pages ones, same sample order) for training "
        "text only: dev/test stay exactly as without them",
    )
    ap.add_argument(
        "--held-out",
        type=Path,
        help="folder with dev.txt and test.txt: use exactly these sentences as dev/test (--dev, --test, --seen "
        "and --seen-lm are then unused); recipe/text_sources holds the sets every release since stage 7 is "
        "scored on",
    )
    ap.add_argument(
        "--man-page-list",
        type=Path,
        help="take the man pages named in this file, in its order, instead of a seeded sample of this "
        "machine's pages (recipe/text_sources/man_pages.txt: the pages of the stage-8 text)",
    )
    args = ap.parse_args(argv)

    listed: list[Path] | None = None
    if args.man_page_list:
        listed, missing = listed_man_pages(args.man_page_list)
        if missing:
            print(f"man pages: {len(missing)} listed pages are not on this machine, e.g. {missing[:3]}")

    def pages(start: int, stop: int) -> list[Path]:
        return listed[start:stop] if listed is not None else man_pages_sample(stop, args.seed)[start:]

    fortunes = clean_sentences(fortune_sentences())
    print(f"fortunes: {len(fortunes)} clean sentences")
    sentences = list(fortunes)
    strata = dict.fromkeys(fortunes, "fortunes")
    if args.man_pages:
        man = clean_sentences(man_sentences(pages(0, args.man_pages)))
        known = set(fortunes)
        man = [s for s in man if s not in known]
        print(f"man pages: {len(man)} new clean sentences (up to {args.man_pages} pages)")
        sentences += man
        strata.update(dict.fromkeys(man, "man"))

    if args.held_out:
        dev, test = read_lines(args.held_out / "dev.txt"), read_lines(args.held_out / "test.txt")
        train, dev, test = pinned_split(sentences, dev, test, args.seed)
        pool = set(sentences)
        print(f"held out: {args.held_out}, {sum(s in pool for s in dev + test)} of its {len(dev + test)} in the pool")
    else:
        seen = set(args.seen.read_text(encoding="utf-8").splitlines()) if args.seen else set()
        if args.seen_lm:
            lm = NgramLM.load(args.seen_lm)
            seen |= {s for s in sentences if lm.lists_sentence(s)}
        if seen:
            print(f"seen: {len(seen & set(sentences))} sentences kept out of dev/test")
        train, dev, test = split_corpus(sentences, args.dev, args.test, args.seed, seen=seen, strata=strata)
    if args.extra_man_pages:
        extra_pages = pages(args.man_pages, args.man_pages + args.extra_man_pages)
        before = len(train)
        train = train_only(train, dev + test, clean_sentences(man_sentences(extra_pages)))
        print(f"extra man pages: {len(train) - before} new training-only sentences from {len(extra_pages)} pages")
    for name, lines in (("train", train), ("dev", dev), ("test", test)):
        write_lines(args.out / f"{name}.txt", lines)
        words = sum(word_count(s) for s in lines)
        print(f"{name}: {len(lines)} sentences, {words} words -> {args.out / (name + '.txt')}")


if __name__ == "__main__":
    main()
