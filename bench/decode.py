"""Decoding throughput: KV cache vs recomputing the prefix, batching, and bf16 vs fp32 on this CPU.

    python -m bench.decode [--repeats 3] [--threads 2] [--weights DIR]

A random-initialised model of the default size (fixed seed) decodes a fixed number of tokens (the end token is
suppressed until then) from a fixed encoder output, so every configuration does identical work. The last line is
one JSON object with ``kv_speedup_100`` (cache vs no cache, 100 tokens, batch 16, beam 5), ``batch_speedup``
(one batch of 16 vs 16 batches of 1, 100 tokens, beam 5, cache on), and the bf16 and int8 speed-ups over fp32.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.decoding import DecodeOptions, beam_search
from model.device import autocast, native_bf16, quantize_int8
from model.transformer import SpeechTransformer

from .common import emit, median_seconds, print_table

DEFAULT_SIZE = json.loads((Path(__file__).parents[1] / "recipe" / "configs" / "default.json").read_text())["model"]


def build_model(weights: str | None) -> SpeechTransformer:
    if weights:
        return load_checkpoint(weights).model.eval()
    torch.manual_seed(0)
    return SpeechTransformer(ModelConfig(vocab_size=256, **(DEFAULT_SIZE | {"dropout": 0.0}))).eval()


def decode_fn(model: SpeechTransformer, memory: torch.Tensor, lengths: torch.Tensor, tokens: int, beam: int,
              cache: bool, dtype: torch.dtype = torch.float32):
    ratio = (tokens + 1) / float(lengths.min())  # room for exactly `tokens` tokens and the end token
    opts = DecodeOptions(beam_size=beam, n_best=1, ctc_weight=0.0, min_len=tokens, max_len_ratio=ratio, use_cache=cache)

    def run() -> list:
        with torch.inference_mode(), autocast(memory.device, dtype):
            return beam_search(model, memory, lengths, opts)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=200, help="encoder frames per utterance (40 ms each)")
    p.add_argument("--weights", default=None, help="measure a trained checkpoint instead of a random model")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = build_model(a.weights)
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(0)
    mem16 = torch.randn(16, a.frames, d, generator=gen)
    lens16 = torch.full((16,), a.frames)
    with torch.inference_mode():
        mem16 = model.encoder.ln(mem16)

    rows, tput = [], {}
    for tokens in (20, 100):
        for batch in (1, 16):
            for beam in (1, 5):
                for cache in (True, False):
                    fn = decode_fn(model, mem16[:batch], lens16[:batch], tokens, beam, cache)
                    secs = median_seconds(fn, a.repeats)
                    tps = batch * tokens / secs
                    tput[(tokens, batch, beam, cache)] = tps
                    rows.append({"tokens": tokens, "batch": batch, "beam": beam, "kv_cache": cache,
                                 "median_s": f"{secs:.3f}", "tokens_per_s": f"{tps:.1f}"})
    print_table(rows, ["tokens", "batch", "beam", "kv_cache", "median_s", "tokens_per_s"])

    # bf16 vs fp32 (cache on, 100 tokens, batch 16, beam 5): speed and whether the hypotheses agree.
    fp32 = decode_fn(model, mem16, lens16, 100, 5, True)
    bf16 = decode_fn(model, mem16, lens16, 100, 5, True, torch.bfloat16)
    native = native_bf16(torch.device("cpu"))
    t32 = median_seconds(fp32, a.repeats)
    start = time.perf_counter()
    out16 = bf16()
    t16 = time.perf_counter() - start
    if native:  # without native bf16 (no AVX512-BF16/AMX) the emulated path is ~10x slower: one timed run
        t16 = median_seconds(bf16, a.repeats, warmup=0)
    same = sum(x[0].tokens == y[0].tokens for x, y in zip(fp32(), out16))
    print(f"bf16 autocast vs fp32 (100 tokens, batch 16, beam 5): {t32 / t16:.2f}x faster, "
          f"{same}/16 identical hypotheses, native bf16 on this CPU: {native}")

    # int8 dynamic quantization (ASR_DTYPE=int8) vs fp32, same work.
    int8 = decode_fn(quantize_int8(model), mem16, lens16, 100, 5, True)
    t8 = median_seconds(int8, a.repeats)
    same8 = sum(x[0].tokens == y[0].tokens for x, y in zip(fp32(), int8()))
    print(f"int8 vs fp32 (100 tokens, batch 16, beam 5): {t32 / t8:.2f}x faster, {same8}/16 identical hypotheses")

    key = (100, 16, 5)
    emit({
        "kv_speedup_100": round(tput[key + (True,)] / tput[key + (False,)], 2),
        "kv_speedup_20": round(tput[(20, 16, 5, True)] / tput[(20, 16, 5, False)], 2),
        "batch_speedup": round(tput[key + (True,)] / tput[(100, 1, 5, True)], 2),
        "tokens_per_s_b16_k5": round(tput[key + (True,)], 1),
        "bf16_speedup": round(t32 / t16, 2),
        "bf16_identical": f"{same}/16",
        "int8_speedup": round(t32 / t8, 2),
        "int8_identical": f"{same8}/16",
        "threads": a.threads,
        "repeats": a.repeats,
        "model": a.weights or "random-init default size",
    })


if __name__ == "__main__":
    main()
