"""Server load test: N concurrent clients post real speech for a fixed time, with and without dynamic batching.

    python -m bench.load                          # starts its own servers on loopback ports
    python -m bench.load --url http://host:8000   # measures a running server (no batching comparison)
    python -m bench.load --ray-replicas 2         # the batching server beside `serve --ray --replicas 2`

Speech comes from espeak-ng. The model is the shipped ``weights/`` when present, else a random-initialised
checkpoint of the default size (its transcripts are noise, but it never stops early, so it costs the most).
Reports throughput (audio seconds per wall second), p50/p95 latency and the mean model batch size, first with
batching on, then with ``ASR_MAX_BATCH_SIZE=1``, and the median latency of a 5 s clip sent alone to the idle
batching server (``p50_ms_single_5s``); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .common import emit, print_table
from .server import ROOT, ServerProcess

SENTENCES = [
    "the weather is lovely today and the sky is clear",
    "please call stella and ask her to bring these things with her",
    "a quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "we need more time to finish the report before monday",
    "turn left at the next corner and walk two blocks",
]
DEFAULT_SIZE = {"d_model": 256, "n_heads": 4, "encoder_layers": 6, "decoder_layers": 3, "d_ff": 1024, "conv_channels": 32}


@dataclass
class Sample:
    started: float
    finished: float
    audio_s: float
    ok: bool


def make_speech(out: Path) -> list[tuple[bytes, float]]:
    import soundfile as sf

    clips = []
    for i, text in enumerate(SENTENCES):
        path = out / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        clips.append((path.read_bytes(), sf.info(str(path)).duration))
    return clips


def five_second_clip(clips: list[tuple[bytes, float]]) -> bytes:
    """The clips end to end, cut at 5.0 s: the one-clip latency probe (``p50_ms_single_5s``)."""
    import io

    import numpy as np
    import soundfile as sf

    parts = [sf.read(io.BytesIO(wav), dtype="float32") for wav, _ in clips]
    rate = parts[0][1]
    audio = np.concatenate([a for a, _ in parts])[: 5 * rate]
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV")
    return buf.getvalue()


def single_latency_ms(url: str, wav: bytes, repeats: int, beam: int | None, headers: dict) -> float:
    """Median latency of one upload at a time on an idle server (after one warm-up request)."""
    params = {"beam_size": beam} if beam else {}
    times = []
    for _ in range(repeats + 1):
        t0 = time.monotonic()
        httpx.post(f"{url}/transcribe", files={"file": ("s.wav", wav)}, params=params, headers=headers,
                   timeout=600).raise_for_status()
        times.append((time.monotonic() - t0) * 1000)
    return round(statistics.median(times[1:]), 1)


def pick_weights(explicit: Path | None, scratch: Path) -> tuple[Path, str]:
    if explicit is not None:
        return explicit, f"checkpoint {explicit}"
    shipped = ROOT / "weights"
    if (shipped / "config.json").is_file():
        return shipped, "shipped weights/"
    from model.testing import make_random_checkpoint

    return make_random_checkpoint(scratch / "random", **DEFAULT_SIZE), "random init, default size (no weights/ yet)"


def metric(url: str, name: str, headers: dict) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def drive(url: str, clips: list[tuple[bytes, float]], concurrency: int, warmup: float, duration: float,
                beam: int | None, headers: dict) -> tuple[list[Sample], float, float]:
    """Run the clients; returns the samples and the window they are measured in."""
    samples: list[Sample] = []
    start = time.monotonic()
    window = (start + warmup, start + warmup + duration)
    params = {"beam_size": beam} if beam else {}

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.monotonic() < window[1]:
            wav, seconds = clips[i % len(clips)]
            i += 1
            t0 = time.monotonic()
            try:
                r = await http.post(f"{url}/transcribe", files={"file": ("s.wav", wav)}, params=params)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append(Sample(t0, time.monotonic(), seconds, ok))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
    return samples, *window


def phase(url: str, clips, args, headers: dict, label: str) -> dict:
    before = (metric(url, "asr_batch_size_sum", headers), metric(url, "asr_batch_size_count", headers))
    samples, w0, w1 = asyncio.run(drive(url, clips, args.concurrency, args.warmup, args.duration, args.beam, headers))
    after = (metric(url, "asr_batch_size_sum", headers), metric(url, "asr_batch_size_count", headers))
    done = [s for s in samples if s.ok and w0 <= s.finished <= w1]
    failed = sum(not s.ok for s in samples)
    latencies = sorted((s.finished - s.started) * 1000 for s in done)
    batches = after[1] - before[1]
    return {
        "run": label,
        "requests": len(done),
        "failed": failed,
        "throughput": round(sum(s.audio_s for s in done) / (w1 - w0), 3),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1) if latencies else None,
        "mean_batch": round((after[0] - before[0]) / batches, 2) if batches else None,
    }


def start_server(weights: Path, max_batch: int, args, log: Path, ray_replicas: int | None = None) -> ServerProcess:
    settings = {"max_batch_size": max_batch, "queue_depth": max(128, 8 * args.concurrency),
                "max_wait_ms": args.max_wait_ms}
    if args.beam:
        settings["default_beam_size"] = args.beam
    if args.torch_threads:
        settings["torch_threads"] = args.torch_threads
    return ServerProcess(weights, log, settings, ray_replicas=ray_replicas)


def comparison_runs(args) -> list[tuple[str, int, int | None]]:
    """(label, ASR_MAX_BATCH_SIZE, Ray replicas) of each local run; the first is the headline."""
    first = ("batching", args.max_batch, None)
    if args.ray_replicas:
        return [first, (f"ray, {args.ray_replicas} replicas", args.max_batch, args.ray_replicas)]
    return [first] if args.batched_only else [first, ("batch size 1", 1, None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="measure this running server instead of starting local ones")
    ap.add_argument("--api-key", default=os.environ.get("ASR_API_KEY"))
    ap.add_argument("--weights", type=Path, help="checkpoint for the local servers (default: weights/ or random)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--beam", type=int, default=None, help="beam width (default: the server's)")
    ap.add_argument("--max-batch", type=int, default=16, help="ASR_MAX_BATCH_SIZE of the batching run")
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--single-repeats", type=int, default=10, help="uploads of the 5 s clip alone, one at a time")
    ap.add_argument("--batched-only", action="store_true", help="skip the batch-size-1 server (no batching_speedup)")
    ap.add_argument("--ray-replicas", type=int, default=0,
                    help="compare with `serve --ray --replicas N` (pip install '.[ray]') instead of batch size 1")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="ASR_TORCH_THREADS of the local servers (default 0: unset, torch's own choice, as "
                         "`speech-transformer serve` runs; 1 = one intra-op thread)")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        clips = make_speech(scratch)
        print(f"{len(clips)} espeak-ng clips, {sum(d for _, d in clips) / len(clips):.1f} s each on average; "
              f"concurrency {args.concurrency}, {args.warmup:g} s warm-up + {args.duration:g} s per run")
        single = five_second_clip(clips)
        if args.url:
            single_ms = single_latency_ms(args.url.rstrip("/"), single, args.single_repeats, args.beam, headers)
            rows = [phase(args.url.rstrip("/"), clips, args, headers, f"server at {args.url}")]
            model = "remote"
        else:
            weights, model = pick_weights(args.weights, scratch)
            print(f"model: {model}; server torch threads: {args.torch_threads or 'default'}")
            rows = []
            for i, (label, size, replicas) in enumerate(comparison_runs(args)):
                server = start_server(weights, size, args, scratch / f"server-{i}.log", replicas)
                try:
                    if i == 0:
                        single_ms = single_latency_ms(server.url, single, args.single_repeats, args.beam, {})
                    rows.append(phase(server.url, clips, args, {}, f"{label} (max {size})"))
                finally:
                    server.stop()
        print_table(rows, ["run", "requests", "failed", "throughput", "p50_ms", "p95_ms", "mean_batch"])
        print(f"a 5 s clip alone: p50 {single_ms} ms over {args.single_repeats} requests")

    main_row = rows[0]
    unbatched = rows[1] if len(rows) == 2 and not args.ray_replicas else None
    ray = rows[1] if len(rows) == 2 and args.ray_replicas else None
    speedup = round(main_row["throughput"] / unbatched["throughput"], 2) if unbatched and unbatched["throughput"] else None
    emit({"throughput": main_row["throughput"], "p50_ms": main_row["p50_ms"], "p95_ms": main_row["p95_ms"],
          "mean_batch_size": main_row["mean_batch"], "batching_speedup": speedup, "p50_ms_single_5s": single_ms,
          "unbatched_throughput": unbatched["throughput"] if unbatched else None,
          **({"ray_replicas": args.ray_replicas, "ray_throughput": ray["throughput"], "ray_p50_ms": ray["p50_ms"],
              "ray_p95_ms": ray["p95_ms"]} if ray else {}),
          "failed_requests": sum(r["failed"] for r in rows),
          "concurrency": args.concurrency, "duration_s": args.duration, "torch_threads": None if args.url else (args.torch_threads or None),
          "model": model})


if __name__ == "__main__":
    main()
