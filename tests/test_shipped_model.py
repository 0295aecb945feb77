"""The shipped default weights: they load, and transcribe a committed clip exactly, directly and through the CLI.

The clip is a test-split sentence (never trained on) spoken by a seen voice; see tests/fixtures/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.audio import decode_audio
from model.checkpoint import load_checkpoint
from model.decoding import DecodeOptions
from model.recognizer import Recognizer

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load(WEIGHTS, device="cpu")


def clips() -> list[tuple[Path, str]]:
    rows = [json.loads(line) for line in (FIXTURES / "clips.jsonl").read_text().splitlines() if line.strip()]
    return [(FIXTURES / r["audio"], r["text"]) for r in rows]


def _trained(provenance: dict) -> bool:
    """A training run's export, or an average (recipe.average) of exports that are each trained, to any depth."""
    sources = provenance.get("averaged")
    return all(_trained(src["provenance"]) for src in sources) if sources else provenance.get("steps", 0) > 0


def test_shipped_checkpoint_is_complete_and_small() -> None:
    ckpt = load_checkpoint(WEIGHTS)
    assert _trained(ckpt.provenance), "the shipped model must be a trained one"
    size = sum(p.stat().st_size for p in WEIGHTS.iterdir())
    assert size < 60 * 1024 * 1024
    assert (WEIGHTS / "README.md").is_file()


def test_shipped_weights_transcribe_the_committed_clips_exactly(recognizer: Recognizer) -> None:
    """With the default decoding (beam 16, joint CTC scoring, word LM fused and re-ranking), as the server runs it,
    and with beam 5."""
    items = clips()
    waves = [decode_audio(path.read_bytes(), recognizer.sample_rate)[0] for path, _ in items]
    assert [r.text for r in recognizer.transcribe(waves)] == [text for _, text in items]
    results = recognizer.transcribe(waves, DecodeOptions(beam_size=5))
    assert [r.text for r in results] == [text for _, text in items]


def test_cli_transcribe_prints_one_line_per_file() -> None:
    items = clips()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "transcribe", *[str(p) for p, _ in items], "--beam", "5"],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.stdout.splitlines() == [text for _, text in items]


def speech_edges(wave: np.ndarray, rate: int) -> tuple[float, float]:
    """First and last 10 ms frame whose peak is within 34 dB of the clip's loudest (these clips are clean TTS)."""
    hop = rate // 100
    peaks = np.abs(wave[: len(wave) // hop * hop]).reshape(-1, hop).max(1)
    loud = np.flatnonzero(peaks > 0.02 * peaks.max())
    return loud[0] / 100, (loud[-1] + 1) / 100


def test_word_timings_follow_the_audio(recognizer: Recognizer) -> None:
    """Words come from aligning the decoded tokens with the CTC head: they spell the transcript, the first starts
    where the speech starts, none outlasts it, and a second of leading silence moves every word by a second."""
    items = clips()
    rate = recognizer.sample_rate
    waves = [decode_audio(path.read_bytes(), rate)[0] for path, _ in items]
    lead = np.zeros(rate, np.float32)
    opts = DecodeOptions(beam_size=5, lm_weight=0.0, lm_fusion_weight=0.0)  # the alignment under test, not the word LM's choices
    plain = recognizer.transcribe(waves, opts)
    shifted = recognizer.transcribe([np.concatenate([lead, w, lead[: rate // 2]]) for w in waves], opts)
    for wave, (_, text), a, b in zip(waves, items, plain, shifted):
        onset, offset = speech_edges(wave, rate)
        assert " ".join(w.word for w in a.words) == text == " ".join(w.word for w in b.words)
        assert all(w.start <= w.end for w in a.words)
        assert all(x.start <= y.start for x, y in zip(a.words, a.words[1:]))
        assert abs(a.words[0].start - onset) <= 0.1, (a.words[0], onset)
        assert a.words[-1].end <= offset + 0.1, (a.words[-1], offset)
        assert all(abs(y.start - x.start - 1.0) <= 0.081 for x, y in zip(a.words, b.words)), (a.words, b.words)


def test_search_margins_narrow_the_beam_and_stop_early_but_keep_the_transcripts(
        recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """``beam_margin`` and ``end_margin`` (the defaults) against the full beam to the end: the same transcripts from
    fewer decoder rows; on audio cut off mid-sentence (where most of a full beam finishes far behind the best) in
    fewer steps too. Alone and in a batch, each utterance gets the same text."""
    from model.decoder_scorer import DecoderScorer

    waves = [decode_audio(path.read_bytes(), recognizer.sample_rate)[0] for path, _ in clips()]
    gap = np.zeros(int(0.3 * recognizer.sample_rate), np.float32)
    joined = np.concatenate([waves[0], gap, waves[1]])
    cut = joined[: int(len(joined) * 0.8)]
    seen: list[int] = []
    extend = DecoderScorer.extend
    monkeypatch.setattr(DecoderScorer, "extend",
                        lambda self, tokens: seen.append(int(self.last.numel())) or extend(self, tokens))

    def search(opts: DecodeOptions) -> tuple[str, int, int]:
        seen.clear()
        text = recognizer.transcribe([cut], opts)[0].text
        return text, len(seen), sum(seen)

    full_text, full_steps, full_rows = search(DecodeOptions(beam_margin=0, end_margin=0))
    text, steps, rows = search(DecodeOptions())
    assert DecodeOptions().beam_margin > 0 and DecodeOptions().end_margin > 0
    assert text == full_text
    assert steps < full_steps and rows < 0.9 * full_rows, (steps, full_steps, rows, full_rows)
    batch = [r.text for r in recognizer.transcribe([cut, *waves])]
    assert batch[0] == text
    assert batch[1:] == [r.text for r in recognizer.transcribe(waves, DecodeOptions(beam_margin=0, end_margin=0))]
