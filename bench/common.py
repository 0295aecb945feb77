"""Shared benchmark helpers: medians over repeats, thread pinning, the JSON last line."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def emit(summary: dict[str, Any]) -> None:
    """The last line a benchmark prints: one JSON object that outside checks parse."""
    print(json.dumps(summary), flush=True)
