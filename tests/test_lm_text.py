"""The LM-only text: what each source yields, and that nothing of dev/test gets in."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from recipe import lm_text
from recipe.lm_text import dictionary_sentences, overlap_filter, rst_paragraphs, wheel_fortune_files, wordnet_examples

HELD = ["the quick brown fox jumps over the lazy dog", "time flies"]


def test_held_out_sentences_and_their_near_duplicates_are_dropped() -> None:
    candidates = [
        "the quick brown fox jumps over the lazy dog",  # the held-out sentence itself
        "a quick brown fox jumps over the lazy dog today",  # shares six words in a row
        "the quick brown fox leaps over the lazy cat",  # shares four and three words in a row
        "i think time flies when you are busy",  # contains the whole short held-out sentence
        "time is money",
    ]
    kept, dropped = overlap_filter(candidates, HELD, n=6)
    assert kept == ["the quick brown fox leaps over the lazy cat", "time is money"]
    assert dropped == 3


def test_rst_prose_is_kept_and_markup_code_and_titles_are_not() -> None:
    rst = """Sorting HOW TO
**************

Python lists have a built-in :meth:`list.sort` method that modifies the list
in-place. There is also a :func:`sorted` built-in function.

.. note:: a directive

Here is an example::

    >>> sorted([5, 2, 3])

* a bullet item

The ``key`` parameter is *also* supported.
"""
    assert list(rst_paragraphs(rst)) == [
        "Python lists have a built-in list.sort method that modifies the list in-place. "
        "There is also a sorted built-in function.",
        "Here is an example::",
        "The key parameter is also supported.",
    ]


def test_wordnet_usage_examples_are_read_from_the_glosses(tmp_path: Path) -> None:
    (tmp_path / "data.verb").write_text(
        '  1 This software and database is provided "as is"\n'
        '00001740 29 v 01 breathe 0 005 | draw air into, and expel out of, the lungs; "I can breathe better '
        'when the air is clean"; "The patient is breathing"\n',
        encoding="utf-8",
    )
    assert list(wordnet_examples(tmp_path)) == ["I can breathe better when the air is clean", "The patient is breathing"]


def test_dictionary_entries_become_plain_sentences(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "devil.dict.dz", "wt", encoding="utf-8") as f:
        f.write("BORE, n.\n  A person who talks when you wish him to\n  listen.\n\n"
                "Describing it as \u201cAcme X\u201d means {insanely great}. It rarely works.\n")
    assert list(dictionary_sentences(tmp_path, ["devil", "missing"])) == [
        "BORE, n.",
        "A person who talks when you wish him to listen.",
        'Describing it as "Acme X" means insanely great.',
        "It rarely works.",
    ]


def test_only_clean_fortune_collections_are_taken(tmp_path: Path) -> None:
    for name in ("fortunes", "fortunes-o", "fortunes.dat", "limerick", "V7-fortunes", "startrek", "unix-quotes"):
        (tmp_path / name).write_text("%\n", encoding="utf-8")
    assert [p.name for p in wheel_fortune_files(tmp_path)] == ["fortunes", "startrek", "unix-quotes"]


def test_the_command_keeps_train_and_held_out_text_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_text, "all_man_pages", lambda per_family: [])
    monkeypatch.setattr(lm_text, "man_sentences", lambda pages: iter(["Use the force, Luke.", "Time flies."]))
    monkeypatch.setattr(lm_text, "wheel_fortune_files", lambda: [])
    monkeypatch.setattr(lm_text, "PYTHON_DOC_SOURCES", tmp_path / "absent")
    monkeypatch.setattr(lm_text, "wordnet_examples", lambda: iter(["The cat sat on 3 mats.", "Use the force, Luke."]))
    monkeypatch.setattr(lm_text, "dictionary_sentences", lambda: iter(["I knew it was time flies."]))
    (tmp_path / "dev.txt").write_text("time flies\n", encoding="utf-8")
    (tmp_path / "train.txt").write_text("use the force luke\n", encoding="utf-8")
    out = tmp_path / "lm_extra.txt"
    lm_text.main(["--held", str(tmp_path / "dev.txt"), "--exclude", str(tmp_path / "train.txt"), "--out", str(out)])
    assert out.read_text(encoding="utf-8").splitlines() == ["the cat sat on three mats"]
