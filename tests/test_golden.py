"""The shipped model's transcripts of the committed clips do not move: identical texts, scores within 1e-3.

The record is ``tests/fixtures/golden_transcripts.json``, written by ``python -m tests.golden``; rewrite it only
when a change of transcripts is the point of the change (and say so in the commit).
"""

from __future__ import annotations

import json

import pytest

from model.recognizer import Recognizer

from .golden import GOLDEN, WEIGHTS, transcripts

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def recomputed() -> dict:
    return transcripts(Recognizer.load(WEIGHTS, device="cpu", dtype="float32"))


@pytest.mark.parametrize("setting", list(json.loads(GOLDEN.read_text())))
def test_transcripts_match_the_golden_record(recomputed: dict, setting: str) -> None:
    golden = json.loads(GOLDEN.read_text())[setting]
    now = recomputed[setting]
    assert sorted(now) == sorted(golden), "the committed clips changed: regenerate with python -m tests.golden"
    for clip, want in golden.items():
        got = now[clip]
        assert got["text"] == want["text"], clip
        assert [e["text"] for e in got["n_best"]] == [e["text"] for e in want["n_best"]], clip
        assert got["score"] == pytest.approx(want["score"], abs=TOLERANCE), clip
        assert [e["score"] for e in got["n_best"]] == pytest.approx([e["score"] for e in want["n_best"]], abs=TOLERANCE)
        assert [w[0] for w in got["words"]] == [w[0] for w in want["words"]], clip
        times = [t for w in want["words"] for t in w[1:]]
        assert [t for w in got["words"] for t in w[1:]] == pytest.approx(times, abs=TOLERANCE), clip


def test_int8_keeps_the_transcripts_of_the_committed_clips() -> None:
    """ASR_DTYPE=int8 (dynamically quantized Linear layers) on the CPU: the same words on these clips; its WER on
    the test sets beside fp32 is in the README."""
    int8 = Recognizer.load(WEIGHTS, device="cpu", dtype="int8")
    assert int8.precision == "int8"
    assert "quantized" in type(int8.model.decoder.blocks[0].ff[0]).__module__
    golden = json.loads(GOLDEN.read_text())["default"]
    got = transcripts(int8)["default"]
    assert {clip: r["text"] for clip, r in got.items()} == {clip: r["text"] for clip, r in golden.items()}


def test_int8_is_refused_on_cuda() -> None:
    from model.device import pick_dtype
    import torch

    with pytest.raises(ValueError, match="CPU"):
        pick_dtype("int8", torch.device("cuda"))
