"""The load benchmark runs end to end and keeps its contract: the last line is one JSON object with ``throughput``,
``p50_ms``, ``p95_ms`` and ``batching_speedup``. Its speeds are not judged here (they live in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_load_runs_both_servers_and_ends_with_its_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--concurrency", "4", "--max-batch", "4", "--duration", "3",
         "--warmup", "1", "--beam", "2"],
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
