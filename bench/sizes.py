"""What a bigger checkpoint costs here: checkpoints side by side on one clip, alone and behind the server.

    python -m bench.sizes --weights weights /tmp/e18 [--seconds 5] [--tokens 30] [--repeats 3] [--threads 2]

For each checkpoint: the encoder on a ``--seconds`` clip (features included), a beam search at the server's
default beam and CTC weight that emits exactly ``--tokens`` tokens (the end token suppressed until then, so a
random-initialised import does the same work as a trained one), and one ``/transcribe`` of the clip through
``speech-transformer serve`` (median of the repeats). The clip is a committed test clip tiled to length. The last
line is one JSON object: ``models``, ``params_m``, ``encode_ms``, ``search_ms``, ``transcribe_ms`` and
``relative_transcribe`` (each model's ``/transcribe`` time over the first's).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from app.config import Settings
from model.decoding import beam_search
from model.recognizer import Recognizer

from .common import emit, median_seconds, print_table
from .server import ServerProcess

CLIP = Path(__file__).parents[1] / "tests" / "fixtures" / "test_seen-000124.wav"


def clip_of(seconds: float, rate: int) -> np.ndarray:
    from model.audio import decode_audio

    audio, _ = decode_audio(CLIP, rate)
    return np.resize(audio, int(seconds * rate)).astype(np.float32)


def measure(weights: Path, audio: np.ndarray, tokens: int, repeats: int) -> dict[str, float]:
    recognizer = Recognizer.load(weights, device="cpu", dtype="float32", lm=None)
    options = Settings().decoding(None)
    wav = torch.from_numpy(audio)

    def encode():
        return recognizer.encode([wav])

    memory, lengths, ctc = encode()
    ratio = (tokens + 1) / float(lengths.min())
    fixed = replace(options, min_len=tokens, max_len_ratio=ratio, lm_fusion_weight=0.0, lm_weight=0.0)

    def search():
        with torch.inference_mode():
            return beam_search(recognizer.model, memory, lengths, fixed, ctc)

    row = {"params_m": sum(p.numel() for p in recognizer.model.parameters()) / 1e6,
           "encode_ms": 1000 * median_seconds(encode, repeats), "search_ms": 1000 * median_seconds(search, repeats)}
    buf = io.BytesIO()
    sf.write(buf, audio, recognizer.sample_rate, format="WAV")
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(weights, Path(tmp) / "server.log") as server:
        def transcribe():
            r = httpx.post(f"{server.url}/transcribe", files={"file": ("clip.wav", buf.getvalue())}, timeout=600)
            r.raise_for_status()

        row["transcribe_ms"] = 1000 * median_seconds(transcribe, repeats)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, nargs="+", default=[Path("weights")])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for weights in a.weights:
        rate = Recognizer.load(weights, device="cpu", lm=None).sample_rate
        rows.append({"model": str(weights), **measure(weights, clip_of(a.seconds, rate), a.tokens, a.repeats)})
    print_table(rows, ["model", "params_m", "encode_ms", "search_ms", "transcribe_ms"])
    first = rows[0]["transcribe_ms"]
    emit({"models": [r["model"] for r in rows], "params_m": [round(r["params_m"], 1) for r in rows],
          "encode_ms": [round(r["encode_ms"], 1) for r in rows], "search_ms": [round(r["search_ms"], 1) for r in rows],
          "transcribe_ms": [round(r["transcribe_ms"], 1) for r in rows],
          "relative_transcribe": [round(r["transcribe_ms"] / first, 2) for r in rows]})


if __name__ == "__main__":
    main()
