"""The shipped model's transcripts of the committed clips, recorded so that refactors can prove they change none.

    python -m tests.golden          # rewrite tests/fixtures/golden_transcripts.json (only when a change is meant)

Each decoding setting the service or the tests use is run over every ``tests/fixtures/*.wav`` in one batch: the
default options, beam 1, beam 5, an n-best of 4, CTC re-scoring instead of prefix scoring, and no word LM; and,
with the default options, each clip joined to the next by 0.3 s of silence (longer input, less certain n-best).
``tests/test_golden.py`` recomputes them and demands identical texts and scores within 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.recognizer import Recognizer, TranscriptionResult

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden_transcripts.json"

SETTINGS: dict[str, DecodeOptions] = {
    "default": DecodeOptions(),
    "beam1": DecodeOptions(beam_size=1),
    "beam5": DecodeOptions(beam_size=5),
    "nbest4": DecodeOptions(n_best=4),
    "ctc_rescore": DecodeOptions(ctc_mode="rescore"),
    "no_lm": DecodeOptions(lm_weight=0.0, lm_fusion_weight=0.0),
}


def clips() -> list[Path]:
    return sorted(FIXTURES.glob("*.wav"))


def _record(result: TranscriptionResult) -> dict[str, Any]:
    return {
        "text": result.text,
        "score": round(result.score, 4),
        "n_best": [{"text": e.text, "score": round(e.score, 4)} for e in result.n_best],
        "words": [[w.word, w.start, w.end] for w in result.words],
    }


def transcripts(recognizer: Recognizer) -> dict[str, dict[str, dict[str, Any]]]:
    """``{setting: {clip name: {text, score, n_best, words}}}`` for every setting in :data:`SETTINGS`."""
    paths = clips()
    waves = [decode_audio(p.read_bytes(), recognizer.sample_rate)[0] for p in paths]
    out = {}
    for name, opts in SETTINGS.items():
        results = recognizer.transcribe(waves, opts)
        out[name] = {p.name: _record(r) for p, r in zip(paths, results)}
    gap = np.zeros(int(0.3 * recognizer.sample_rate), np.float32)
    joined = [np.concatenate([w, gap, waves[(i + 1) % len(waves)]]) for i, w in enumerate(waves)]
    results = recognizer.transcribe(joined, DecodeOptions(n_best=4))
    out["joined_nbest4"] = {p.name: _record(r) for p, r in zip(paths, results)}
    return out


def dumps(data: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One line per clip and setting, so a diff shows which transcript moved."""
    lines = ["{"]
    for i, (name, per_clip) in enumerate(data.items()):
        lines.append(f" {json.dumps(name)}: {{")
        rows = [f"  {json.dumps(clip)}: {json.dumps(rec, ensure_ascii=False)}" for clip, rec in per_clip.items()]
        lines.append(",\n".join(rows))
        lines.append(" }" + ("," if i < len(data) - 1 else ""))
    return "\n".join(lines + ["}"]) + "\n"


def main() -> None:
    data = transcripts(Recognizer.load(WEIGHTS, device="cpu", dtype="float32"))
    GOLDEN.write_text(dumps(data))
    print(f"wrote {GOLDEN} ({len(data)} settings x {len(clips())} clips)")


if __name__ == "__main__":
    main()
