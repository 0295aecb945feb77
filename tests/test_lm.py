"""The word language model: Kneser-Ney estimation, ARPA round trip, backoff scoring, and re-ranking the beam."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.decoding import DecodeOptions
from model.lm import ArpaError, NgramLM
from model.recognizer import Recognizer
from model.testing import make_random_checkpoint
from recipe.lm import estimate, write_arpa

ROOT = Path(__file__).resolve().parents[1]
TEXT = """the cat sat on the mat
the dog sat on the log
a cat and a dog
the cat saw the dog on the mat
dogs and cats sat
the mat is on the floor
""".splitlines()


@pytest.fixture(scope="module", params=["lm.arpa", "lm.arpa.gz", "lm.arpa.xz"])
def lm(request, tmp_path_factory) -> NgramLM:
    path = write_arpa(estimate([s.split() for s in TEXT], order=3), tmp_path_factory.mktemp("lm") / request.param)
    return NgramLM.load(path)


def test_each_conditional_distribution_sums_to_one(lm: NgramLM) -> None:
    vocab = sorted({w for s in TEXT for w in s.split()} | {"</s>", "<unk>"})
    for context in (["<s>"], ["<s>", "the"], ["the", "cat"], ["on", "the"], ["mat", "is"], ["zebra", "xylophone"], []):
        total = sum(math.exp(lm.log_prob(w, context)) for w in vocab)
        assert total == pytest.approx(1.0, abs=5e-4), context  # the file keeps four decimals of log10


def test_a_four_gram_model_is_a_distribution_and_uses_its_longest_context(tmp_path: Path) -> None:
    lm = NgramLM.load(write_arpa(estimate([s.split() for s in TEXT], order=4), tmp_path / "lm4.arpa.xz"))
    assert lm.order == 4
    vocab = sorted({w for s in TEXT for w in s.split()} | {"</s>", "<unk>"})
    for context in (["<s>", "the", "cat"], ["cat", "sat", "on"], ["zebra", "the", "cat"], ["on", "the"]):
        assert sum(math.exp(lm.log_prob(w, context)) for w in vocab) == pytest.approx(1.0, abs=5e-4), context
    # both contexts end in "on the"; only the four-gram "is on the floor" tells them apart
    assert lm.log_prob("floor", ["is", "on", "the"]) > lm.log_prob("floor", ["sat", "on", "the"])


def test_seen_word_orders_beat_scrambled_and_misspelt_ones(lm: NgramLM) -> None:
    assert lm.order == 3
    assert lm.score("the cat sat on the mat") > lm.score("mat the on sat cat the")
    assert lm.score("the dog sat on the log") > lm.score("the dgo sat on the log")
    unseen = lm.score("zebra")
    assert math.isfinite(unseen) and unseen < lm.score("cat")
    assert lm.log_prob("sat", ["the", "cat"]) > lm.log_prob("sat", ["the", "floor"])  # a seen trigram vs backoff


def test_an_unpruned_lm_lists_its_training_sentences_in_full(lm: NgramLM) -> None:
    """What ``recipe.text --seen-lm`` relies on to keep a base model's training text out of new test sets."""
    assert all(lm.lists_sentence(s) for s in TEXT)
    assert lm.lists_sentence("the cat sat on the log")  # made only of others' trigrams: kept out too (harmless)
    assert not lm.lists_sentence("the dog sat on the mat and")  # every word known, "mat and </s>" never seen
    assert not lm.lists_sentence("a zebra")


def test_the_arpa_file_is_reproducible(tmp_path: Path) -> None:
    table = estimate([s.split() for s in TEXT], order=2)
    a, b = write_arpa(table, tmp_path / "a.arpa.gz"), write_arpa(table, tmp_path / "b.arpa.gz")
    assert a.read_bytes() == b.read_bytes()
    assert NgramLM.load(a).score("the cat") == NgramLM.load(write_arpa(table, tmp_path / "c.arpa")).score("the cat")


def test_a_general_vocabulary_floor_ranks_real_words_above_misspellings(tmp_path: Path) -> None:
    """Words the text never used get the floor's mass by frequency: a real word beats a non-word (``<unk>``)."""
    background = {"the": 5e-2, "octopus": 2e-6, "zebra": 1e-6, "mat": 1e-5}
    table = estimate([s.split() for s in TEXT], order=3, background=background)
    lm = NgramLM.load(write_arpa(table, tmp_path / "lm.arpa"))
    vocab = sorted({w for s in TEXT for w in s.split()} | set(background) | {"</s>", "<unk>"})
    for context in (["<s>"], ["on", "the"], ["zebra", "octopus"], []):  # still a distribution, new words included
        assert sum(math.exp(lm.log_prob(w, context)) for w in vocab) == pytest.approx(1.0, abs=1e-4), context
    assert lm.log_prob("octopus", ["the"]) > lm.log_prob("zebra", ["the"]) > lm.log_prob("octipus", ["the"])
    assert lm.score("the octopus sat on the mat") > lm.score("the octipus sat on the mat")
    plain = NgramLM.load(write_arpa(estimate([s.split() for s in TEXT], order=3), tmp_path / "plain.arpa"))
    assert plain.log_prob("octopus", ["the"]) == plain.log_prob("octipus", ["the"])  # uniform floor: both <unk>


def test_the_general_english_list_is_in_transcript_form() -> None:
    from recipe.lm import TRANSCRIPT_WORD, general_english

    words = general_english(5000)
    assert len(words) == 5000 and all(TRANSCRIPT_WORD.fullmatch(w) for w in words)
    assert next(iter(words)) == "the" and "don't" in words and "don\u2019t" not in words
    assert list(words.values()) == sorted(words.values(), reverse=True)  # commonest first


def test_the_command_line_reads_text_files_and_manifests(tmp_path: Path) -> None:
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(TEXT[:3]) + "\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": "x.wav", "text": t, "duration": 1.0}) + "\n" for t in TEXT[3:]))
    out = tmp_path / "lm.arpa.gz"
    subprocess.run([sys.executable, "-m", "recipe.lm", "--text", str(text), "--manifest", str(manifest), "--out",
                    str(out)], check=True, capture_output=True, cwd=ROOT, timeout=120)
    lm = NgramLM.load(out)
    assert lm.log_prob("floor", ["on", "the"]) > lm.log_prob("zebra", ["on", "the"])  # from the manifest
    assert lm.log_prob("sat", ["cat"]) > lm.log_prob("zebra", ["cat"])  # from the text file


def test_unreadable_arpa_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.arpa"
    junk.write_text("this is not a language model\n")
    with pytest.raises(ArpaError):
        NgramLM.load(junk)
    no_unk = tmp_path / "no_unk.arpa"
    no_unk.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tword\n\n\\end\\\n")
    with pytest.raises(ArpaError, match="<unk>"):
        NgramLM.load(no_unk)
    good = write_arpa(estimate([s.split() for s in TEXT], order=2), tmp_path / "good.arpa.xz").read_bytes()
    for name, data in (("cut.arpa.xz", good[: len(good) // 2]), ("fake.arpa.xz", b"not xz"), ("fake.arpa.gz", b"nope")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ArpaError):
            NgramLM.load(tmp_path / name)


def test_the_lm_reranks_the_finished_beam(tmp_path: Path) -> None:
    """A random model's 5-best; an LM that knows only a lower hypothesis's words makes it the best one."""
    weights = make_random_checkpoint(tmp_path / "m")
    rec = Recognizer.load(weights, device="cpu")
    assert rec.lm is None  # no lm.arpa beside these weights
    wave = (0.1 * np.random.default_rng(3).standard_normal(24000)).astype(np.float32)
    five = rec.transcribe([wave], DecodeOptions(beam_size=5, n_best=5))[0].n_best
    target = next(h.text for h in reversed(five) if h.text != five[0].text)
    write_arpa(estimate([target.split()] * 3, order=3), weights / "lm.arpa")
    with_lm = Recognizer.load(weights, device="cpu")
    assert with_lm.lm is not None
    assert with_lm.transcribe([wave], DecodeOptions(beam_size=5, lm_weight=1.0, lm_fusion_weight=0.0))[0].text == target
    assert with_lm.transcribe([wave], DecodeOptions(beam_size=5, lm_weight=0.0, lm_fusion_weight=0.0))[0].text == five[0].text
    assert Recognizer.load(weights, device="cpu", lm=None).lm is None


def test_fusion_adds_each_word_once_when_it_is_complete(tmp_path: Path) -> None:
    """Summed along a hypothesis, the fusion scores are exactly its LM score + bonus x words."""
    from model.lm_fusion import WordLMFusion
    from model.scorer import Scorer
    from model.tokenizer import Tokenizer

    lm = NgramLM.load(write_arpa(estimate([s.split() for s in TEXT], order=3), tmp_path / "lm.arpa"))
    tok = Tokenizer(ROOT / "weights" / "tokenizer.model")
    eos = 3
    fusion = WordLMFusion(lm, tok, eos_id=eos, word_bonus=2.0)
    assert isinstance(fusion, Scorer)
    texts = ["the cat sat on the mat", "a zebra and a dog", "mat"]  # "▁", "z", ... : a bare word-start piece too
    seqs = [[*tok.encode(t), eos] for t in texts]
    width = max(map(len, seqs))
    seqs = [s + [eos] * (width - len(s)) for s in seqs]  # finished rows keep "ending": their gains are ignored
    fusion.start(len(texts))
    totals = [0.0] * len(texts)
    order = list(range(len(texts)))  # which text each row holds; reversed every step, as a beam reorders rows
    for step in range(width):
        gains = fusion.extend(torch.tensor([[seqs[i][step]] for i in order]))[:, 0].tolist()
        for i, g in zip(order, gains):
            if step < len(tok.encode(texts[i])) + 1:
                totals[i] += g
        rows = list(reversed(range(len(order))))
        order = [order[r] for r in rows]
        fusion.select(torch.tensor(rows), torch.tensor([seqs[i][step] for i in order]))
    for text, total in zip(texts, totals):
        assert total == pytest.approx(lm.score(text) + 2.0 * len(text.split()), abs=1e-4), text
    # a word-opening token after a partial word is charged that word; a continuing piece is charged nothing
    fusion.start(1)
    fusion.select(torch.tensor([0]), torch.tensor(tok.encode("the cat")[:1]))
    pieces = torch.tensor([[tok.encode("the cat")[1], eos]])
    assert fusion.extend(pieces)[0, 0] == pytest.approx(lm.log_prob("the", ["<s>"]) + 2.0, abs=1e-5)
    assert torch.equal(fusion.extend(None)[:, pieces[0]], fusion.extend(pieces))  # None: every token
