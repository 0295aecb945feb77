"""``recipe.festival``: evaluation-only speech from Festival voices (never trained, tuned or selected on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from recipe.festival import VOICES, build, speak
from recipe.voices import VOICES as TRAINING_CATALOGUE


def test_festival_voices_are_not_in_the_training_catalogue() -> None:
    assert not any(v.engine == "festival" or v.name in VOICES for v in TRAINING_CATALOGUE)


def test_festival_writes_a_resumable_16k_manifest(tmp_path: Path) -> None:
    text = tmp_path / "test.txt"
    text.write_text("the weather is lovely today\nplease call stella and ask her to come\n")
    manifest = build(text, tmp_path / "out", voices=("ked_diphone",), jobs=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["the weather is lovely today", "please call stella and ask her to come"]
    assert {r["voice"] for r in rows} == {"festival:ked_diphone"}
    for r in rows:
        info = sf.info(str(manifest.parent / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1
        assert r["duration"] == pytest.approx(info.frames / 16000, abs=1e-3) and 1.0 < r["duration"] < 6.0
    stamps = [(manifest.parent / r["audio"]).stat().st_mtime_ns for r in rows]
    build(text, tmp_path / "out", voices=("ked_diphone",), jobs=2)  # a re-run keeps valid files
    assert [(manifest.parent / r["audio"]).stat().st_mtime_ns for r in rows] == stamps


def test_festival_refuses_an_unknown_voice_and_empty_text(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no audio"):
        speak("no_such_voice", "hello there", tmp_path / "x.wav")  # text2wave itself exits 0
    with pytest.raises(ValueError):
        speak("ked_diphone", "   ", tmp_path / "y.wav")
