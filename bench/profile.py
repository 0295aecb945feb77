"""Where a batch's decoding time goes: py-spy samples of `Recognizer.transcribe` on bench.load-like batches.

    python -m bench.profile [--weights weights] [--batch 16] [--repeats 4] [--threads 2]

The workload is bench.load's: espeak-ng sentences (2-3 s), decoded ``--batch`` at a time at the server's default
settings (beam 16, joint CTC, word LM). py-spy (PyPI) samples the process 200 times a second; each sample is
charged to the innermost stage of the search it is in (`STAGES`, matched on function names), so the shares add
up to 100%. The last line is one JSON object: each stage's share in percent, and the milliseconds per batch.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .common import emit, print_table

# (stage, its functions as "file:qualified name", as py-spy names frames); a sample goes to the innermost stage on
# its stack.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("features + CMVN", ("model/features.py:FilterbankFeatures.forward", "model/features.py:GlobalCMVN.forward")),
    ("encoder", ("model/transformer.py:Encoder.forward",)),
    ("decoder layers (one step)", ("model/decoder_scorer.py:DecoderScorer.extend",)),
    ("CTC prefix scorer", ("model/ctc_prefix.py:CTCPrefixScorer.extend", "model/ctc_prefix.py:CTCPrefixScorer.end_logprob")),
    ("word-LM fusion", ("model/lm_fusion.py:WordLMFusion.extend", "model/lm_fusion.py:WordLMFusion.select",
                        "model/lm_fusion.py:WordLMFusion.start")),
    ("reorder: KV cache, CTC state, history", ("model/decoder_scorer.py:DecoderScorer.select",
                                               "model/ctc_prefix.py:CTCPrefixScorer.select", "model/decoding.py:_advance")),
    ("top-k, length rules, finishing, pruning", ("model/decoding.py:_expand", "model/decoding.py:_length_rules",
                                                 "model/decoding.py:_finish", "model/decoding.py:_prune")),
    ("set-up: cross-attention K/V, CTC tables", ("model/decoder_scorer.py:DecoderScorer.__init__",
                                                 "model/ctc_prefix.py:CTCPrefixScorer.__init__")),
    ("ranking and LM re-ranking", ("model/ranking.py:rank", "model/recognizer.py:Recognizer._rerank")),
    ("word timings (CTC alignment)", ("model/recognizer.py:Recognizer._words",)),
    ("search loop (Python)", ("model/decoding.py:beam_search",)),
]
DECODE_CALL = "model/recognizer.py:Recognizer.transcribe"
OTHER = "other, inside transcribe"


def workload(weights: Path, batch: int, repeats: int, threads: int) -> None:
    """Decode the same batches ``repeats`` times (one untimed warm-up first)."""
    import torch

    from app.config import Settings
    from bench.load import SENTENCES
    from model.audio import decode_audio
    from model.recognizer import Recognizer

    torch.set_num_threads(threads)
    recognizer = Recognizer.load(weights, device="cpu", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i, text in enumerate(SENTENCES):
            path = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            clips.append(decode_audio(path, recognizer.sample_rate)[0])
    audios = [clips[i % len(clips)] for i in range(batch)]
    options = Settings().decoding()
    recognizer.transcribe(audios, options)
    started = time.perf_counter()
    for _ in range(repeats):
        recognizer.transcribe(audios, options)
    print(f"ms_per_batch {(time.perf_counter() - started) * 1000 / repeats:.1f}")


def stage_of(stack: str) -> str | None:
    """The stage a py-spy stack (``fn (file:line);...``, outermost first) is charged to; None outside decoding."""
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.strip().rpartition(" (")
        frames.append(f"{where.rsplit(':', 1)[0]}:{name}")
    if DECODE_CALL not in frames:
        return None
    for frame in reversed(frames):
        for stage, functions in STAGES:
            if frame in functions:
                return stage
    return OTHER


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)  # the sampled child process
    a = p.parse_args()
    if a.workload:
        workload(a.weights, a.batch, a.repeats, a.threads)
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "samples.txt"
        child = [sys.executable, "-m", "bench.profile", "--workload", "--weights", str(a.weights),
                 "--batch", str(a.batch), "--repeats", str(a.repeats), "--threads", str(a.threads)]
        out = subprocess.run([spy, "record", "--format", "raw", "--rate", "200", "--native", "-o", str(raw),
                              "--", *child], capture_output=True, text=True, check=True)
        ms = float(next(line for line in out.stdout.splitlines() if line.startswith("ms_per_batch")).split()[1])
        counts: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            stage = stage_of(stack)
            if stage is not None:
                counts[stage] += int(n)
    total = sum(counts.values())
    names = [stage for stage, _ in STAGES] + [OTHER]
    shares = {name: round(100 * counts.get(name, 0) / total, 1) for name in dict.fromkeys(names)}
    print_table([{"stage": k, "share_%": v} for k, v in shares.items()], ["stage", "share_%"])
    print(f"{ms:.0f} ms per batch of {a.batch} ({a.threads} threads), {total} samples inside transcribe")
    emit({"ms_per_batch": ms, "batch": a.batch, "threads": a.threads, "shares": shares})


if __name__ == "__main__":
    main()
