"""The streaming benchmark runs end to end on two fixture clips and keeps its contract: the last line is one JSON
object with the final latencies, the partial interval, both WERs and the stream count. Speeds and accuracy are
not judged here (they live in bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"final_latency_p50_ms", "final_latency_p95_ms", "partial_interval_p50_ms", "wer_finals", "wer_rest",
            "streams"}


def test_bench_stream_runs_real_time_streams_and_ends_with_its_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.stream", "--manifest", "tests/fixtures/clips.jsonl", "--clips", "2",
         "--streams", "2", "--gap-s", "0.8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert CONTRACT <= set(last)
    assert last["streams"] == 2 and last["errors"] == 0 and [run["streams"] for run in last["runs"]] == [2]
    assert last["finals"] >= 2  # at least each stream's final after eof
    assert 0 < last["final_latency_p50_ms"] <= last["final_latency_p95_ms"]
    assert last["eof_latency_p50_ms"] > 0 and last["partial_interval_p50_ms"] > 0
    assert all(isinstance(last[k], float) and last[k] >= 0 for k in ("wer_finals", "wer_rest"))
    ok, posted = map(int, last["uploads_ok_during"].split("/"))
    assert posted >= 1 and ok == posted


def test_telephone_streams_carry_8_khz_g711_the_server_decodes_back() -> None:
    """``--encoding mulaw/alaw``: 100 ms chunks of 800 one-byte samples at 8 kHz, which the server's own G.711
    decoder turns back into the audio (a 440 Hz tone, band-limited by 8 kHz, comes back within companding noise)."""
    import numpy as np

    from app.pcm import PcmDecoder
    from bench.stream import encode_chunks
    from model.resample import resample

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    for encoding in ("mulaw", "alaw"):
        config, chunks = encode_chunks(tone, encoding)
        assert config == {"sample_rate": 8000, "encoding": encoding}
        assert [len(c) for c in chunks] == [800] * 10
        decoder = PcmDecoder(encoding)
        back = np.concatenate([decoder.decode(c) for c in chunks])
        narrow = resample(tone, 16000, 8000)
        assert np.abs(back - narrow).max() < 0.02 and np.corrcoef(back, narrow)[0, 1] > 0.999
    config, chunks = encode_chunks(tone, "pcm_s16le")
    assert config == {"sample_rate": 16000, "encoding": "pcm_s16le"} and len(chunks[0]) == 3200
