"""``python -m recipe.evaluate``: the shipped weights scored on the committed clips, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "tests" / "fixtures" / "clips.jsonl"


def test_evaluate_reports_wer_cer_per_voice_rtf_and_the_oracle(tmp_path: Path) -> None:
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
    assert last == {"wer": [0.0, round(1 / words, 4)], "cer": [0.0, off["cer"]], "oracle_wer": [0.0, off["oracle_wer"]]}
