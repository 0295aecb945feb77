"""A LibriSpeech-style tree converts to a manifest the recipe reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from model.audio import decode_audio
from recipe.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_librispeech_tree_becomes_a_manifest(tmp_path: Path) -> None:
    chapter = tmp_path / "LibriSpeech" / "train-clean-5" / "19" / "198"
    chapter.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for utt, seconds in (("19-198-0000", 1.5), ("19-198-0001", 0.75)):
        sf.write(chapter / f"{utt}.flac", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    (chapter / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY WAS WRITTEN BY JANE AUSTEN\n"
        "19-198-0001 SHE DIDN'T   KNOW\n"
        "19-198-0002 THIS ONE HAS NO AUDIO\n"
    )
    out = tmp_path / "manifests" / "train.jsonl"
    run = subprocess.run([sys.executable, "-m", "recipe.librispeech", "--root", str(tmp_path / "LibriSpeech"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "2 utterances" in run.stderr and "1 skipped" in run.stderr and "no audio file for 19-198-0002" in run.stderr
    utts = read_manifest(out)
    assert [u.text for u in utts] == ["northanger abbey was written by jane austen", "she didn't know"]
    assert [u.duration for u in utts] == [1.5, 0.75]
    assert {u.voice for u in utts} == {"19"}
    audio, rate = decode_audio(utts[1].audio.read_bytes(), 16000)
    assert rate == 16000 and len(audio) == 12000


def test_an_empty_tree_is_an_error(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "recipe.librispeech", "--root", str(tmp_path), "--out",
                          str(tmp_path / "m.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "no utterances found" in run.stderr
