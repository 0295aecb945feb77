"""``python -m recipe.evaluate``: the shipped weights scored on the committed clips, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from recipe.evaluate import score, telephone_line

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "tests" / "fixtures" / "clips.jsonl"


def test_evaluate_reports_wer_cer_exact_match_per_voice_rtf_and_the_oracle(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in CLIPS.read_text().splitlines() if line.strip()]
    # The same audio with one reference word changed: exactly one substitution among all the reference words.
    wrong = [dict(r, audio=str(CLIPS.parent / r["audio"])) for r in rows]
    assert wrong[-1]["text"] == "no one responded"
    wrong[-1]["text"] = "no one replied"
    altered = tmp_path / "altered.jsonl"
    altered.write_text("".join(json.dumps(r) + "\n" for r in wrong))
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "recipe.evaluate", "--weights", str(ROOT / "weights"), "--manifest", str(CLIPS),
         "--manifest", str(altered), "--beam", "5", "--threads", "1", "--oracle", "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    words = sum(len(r["text"].split()) for r in rows)
    exact, off = json.loads(report.read_text())["reports"]
    assert exact["wer"] == exact["cer"] == exact["oracle_wer"] == 0.0  # the clips transcribe exactly (test_shipped_model)
    assert exact["utterances"] == len(rows) and exact["n_best"] == 5 and exact["rtf"] > 0
    assert set(exact["per_voice"]) == {r["voice"] for r in rows}
    assert set(exact["per_engine"]) == {r["voice"].split(":")[0] for r in rows}
    assert off["wer"] == round(1 / words, 4)
    assert off["per_voice"][rows[-1]["voice"]]["wer"] == round(1 / 3, 4)
    assert 0.0 <= off["oracle_wer"] <= off["wer"]
    assert [i["hyp"] for i in off["items"]] == [r["text"] for r in rows]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    short = [r for r in rows if len(r["text"].split()) <= 3]  # "no one responded", the one the altered copy changed
    assert exact["exact"] == exact["exact_short"] == 1.0 and exact["short_utterances"] == len(short) == 1
    assert off["exact"] == round(1 - 1 / len(rows), 4) and off["exact_short"] == 0.0
    assert off["per_voice"][rows[-1]["voice"]]["exact"] == 0.0 and off["per_voice"][rows[0]["voice"]]["exact"] == 1.0
    assert "exact 100.00%, 100.00% of the 1 of 1-3 words" in out.stdout
    assert last == {"wer": [0.0, round(1 / words, 4)], "cer": [0.0, off["cer"]], "exact": [1.0, off["exact"]],
                    "exact_short": [1.0, 0.0], "oracle_wer": [0.0, off["oracle_wer"]]}


def test_exact_match_counts_whole_utterances_overall_and_of_1_to_3_words() -> None:
    refs = ["seven", "four seven one nine", "zero", "yes please", "the quick brown fox jumps"]
    hyps = ["seven", "four seven one", "zero zero", "yes please", "the quick brown fox jumps"]
    s = score(refs, hyps)
    assert s["exact"] == 0.6 and s["utterances"] == 5  # a missing or an extra word makes it inexact
    assert s["exact_short"] == round(2 / 3, 4) and s["short_utterances"] == 3
    assert s["wer"] == round(2 / 13, 4)
    assert score(["seven"], [" Seven "])["exact"] == 1.0  # words compared lower-cased, as the references are
    none_short = score(["the quick brown fox"], ["the quick brown fox"])
    assert none_short["exact"] == 1.0 and none_short["exact_short"] is None and none_short["short_utterances"] == 0


def test_a_telephone_line_carries_the_voice_band_and_drops_what_8_khz_cannot() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    voice, high = 0.3 * np.sin(2 * np.pi * 1000 * t), 0.3 * np.sin(2 * np.pi * 6000 * t)
    for encoding in ("mulaw", "alaw"):
        heard = telephone_line((voice + high).astype(np.float32), rate, encoding)
        assert abs(heard.size - rate) <= 2
        middle = slice(4000, 12000)  # half a second away from the resampler's ramps at the ends: 2 Hz bins
        spectrum = np.abs(np.fft.rfft(heard[middle]))
        sent = np.abs(np.fft.rfft((voice + high)[middle]))
        assert 0.9 < spectrum[500] / sent[500] < 1.1  # 1 kHz, the voice band, arrives, companding noise and all
        assert spectrum[3000] < 0.01 * sent[3000]  # 6 kHz, above the 4 kHz a line carries, does not
        assert 0 < np.abs(heard - voice)[middle].max() < 0.05
