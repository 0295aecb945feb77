"""The GPU check: what a lent GPU must show, in one run of a few minutes.

    python -m bench.gpu_check                      # on the GPU: the full check (sized for under 5 minutes; not yet run on one)
    python -m bench.gpu_check --device cpu --quick # the dry run the tests make on a CPU

1. Precision: fp16 and bf16 against fp32 on the committed clips and a test manifest: the share of identical
   transcripts and each one's WER (fp16 only where there is CUDA).
2. Throughput of the model alone: batches of 64 clips (``--quick``: 8), audio seconds per second.
3. The server under load: ``bench.load`` at concurrency 64 (``--quick``: 4) on this device.
4. One data-parallel training step: ``torchrun -m recipe.train`` on the committed clips (nccl on GPUs, gloo here).

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import torch

from model.audio import decode_audio
from model.recognizer import Recognizer

from .common import emit

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_TRAINING = {
    "model": {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0,
              "conv_channels": 4},
    "tokenizer": {"type": "char", "vocab_size": 40},
    "train": {"peak_lr": 0.002, "warmup_steps": 4, "weight_decay": 0.01, "max_batch_frames": 100000,
              "label_smoothing": 0.1, "ctc_weight": 0.3, "grad_clip": 5.0, "epochs": 1, "spec_freq_masks": 0,
              "spec_freq_width": 0, "spec_time_masks": 0, "spec_time_width": 0, "eval_every": 1000,
              "eval_each_epoch": False, "snapshot_every": 1, "average_last": 1, "feature_copies": 1, "seed": 0},
}


def rows_of(manifest: Path, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:limit]
    for row in rows:
        audio = Path(row["audio"])
        row["path"] = audio if audio.is_absolute() else manifest.parent / audio
    return rows


def precision(weights: Path, device: str, rows: list[dict]) -> dict[str, object]:
    """fp16/bf16 transcripts beside fp32's on the same audio: identical share and WER."""
    audio = [decode_audio(r["path"], 16000)[0] for r in rows]
    refs = [r["text"] for r in rows]
    dtypes = ["float32", "bfloat16"] + (["float16"] if device == "cuda" else [])
    texts = {}
    for dtype in dtypes:
        recognizer = Recognizer.load(weights, device=device, dtype=dtype)
        texts[dtype] = [r.text for i in range(0, len(audio), 16) for r in recognizer.transcribe(audio[i: i + 16])]
    out: dict[str, object] = {"fp32_wer": round(100 * jiwer.wer(refs, texts["float32"]), 2), "utterances": len(rows)}
    for dtype, short in (("bfloat16", "bf16"), ("float16", "fp16")):
        if dtype in texts:
            out[f"{short}_identical"] = f"{sum(a == b for a, b in zip(texts[dtype], texts['float32']))}/{len(rows)}"
            out[f"{short}_wer"] = round(100 * jiwer.wer(refs, texts[dtype]), 2)
    return out


def batch_throughput(weights: Path, device: str, rows: list[dict], batch: int) -> float:
    """Audio seconds decoded per second, ``batch`` clips at a time (after one warm-up batch)."""
    recognizer = Recognizer.load(weights, device=device)
    audio = [decode_audio(r["path"], 16000)[0] for r in rows]
    clips = [audio[i % len(audio)] for i in range(batch)]
    recognizer.transcribe(clips)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    recognizer.transcribe(clips)
    if device == "cuda":
        torch.cuda.synchronize()
    return round(sum(len(c) for c in clips) / 16000 / (time.perf_counter() - started), 1)


def server_load(weights: Path, concurrency: int, duration: float) -> dict:
    """``bench.load``'s JSON at this concurrency (its servers pick the GPU when there is one)."""
    out = subprocess.run([sys.executable, "-m", "bench.load", "--weights", str(weights), "--concurrency",
                          str(concurrency), "--max-batch", str(concurrency), "--duration", str(duration),
                          "--warmup", "2", "--single-repeats", "2", "--batched-only"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ddp_step(device: str, scratch: Path) -> float:
    """Seconds of a one-step ``torchrun`` training run (features, tokenizer and export included)."""
    ranks = max(1, torch.cuda.device_count()) if device == "cuda" else 1
    manifest = scratch / "clips.jsonl"
    rows = [{k: v for k, v in r.items() if k != "path"} | {"audio": str(r["path"])}
            for r in rows_of(FIXTURES / "clips.jsonl", 100)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (scratch / "tiny.json").write_text(json.dumps(TINY_TRAINING))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                    "-m", "recipe.train", "--train", str(manifest), "--dev", str(manifest), "--config",
                    str(scratch / "tiny.json"), "--out", str(scratch / "run"), "--work", str(scratch / "feats"),
                    "--jobs", "1", "--max-steps", "1", "--device", device],
                   cwd=ROOT, capture_output=True, check=True, timeout=600)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--manifest", type=Path, default=ROOT / "data" / "corpus" / "test_seen.jsonl",
                   help="test manifest beside the committed clips (skipped when absent)")
    p.add_argument("--quick", action="store_true", help="a few clips, small batches and a short load run")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu --quick for the dry run)")
    rows = rows_of(FIXTURES / "clips.jsonl", 100)
    if a.manifest.is_file():
        rows += rows_of(a.manifest, 8 if a.quick else 200)
    result: dict[str, object] = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
                                 "quick": a.quick}
    result |= precision(a.weights, a.device, rows)
    batch = 8 if a.quick else 64
    result[f"batch{batch}_audio_s_per_s"] = batch_throughput(a.weights, a.device, rows, batch)
    load = server_load(a.weights, 4 if a.quick else 64, 3 if a.quick else 30)
    result |= {"server_concurrency": load["concurrency"], "server_throughput": load["throughput"],
               "server_p95_ms": load["p95_ms"], "server_failed": load["failed_requests"]}
    with tempfile.TemporaryDirectory() as tmp:
        result["ddp_step_s"] = ddp_step(a.device, Path(tmp))
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    emit(result)


if __name__ == "__main__":
    main()
