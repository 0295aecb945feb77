"""Word and character error rates of a checkpoint on a manifest, per voice, plus the real-time factor and the
exact-match rate (overall and on utterances of 1-3 words).

    python -m recipe.evaluate --weights weights --manifest data/corpus/test_seen.jsonl [--beam 5] [--report out.json]

``--channel mulaw`` (or ``alaw``) first sends every clip down a telephone line, as a caller's audio reaches the
server: resampled to 8 kHz, G.711-encoded, decoded by the server's stream decoder and resampled back.

``--oracle`` also reports the WER of the best hypothesis in each utterance's finished beam (chosen by its errors
against the reference): how far any re-ranking of the same search could go.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch

from app.client import TELEPHONE_RATE, g711_bytes
from app.pcm import G711_SUBTYPES, PcmDecoder
from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.recognizer import Recognizer
from model.resample import resample

from .manifest import read_manifest


SHORT_WORDS = 3  # "short" utterances have 1-3 reference words: a digit, a command, a yes or a no


def exact_rate(refs: list[str], hyps: list[str]) -> float | None:
    """Share of utterances transcribed word for word (lower-cased): what a user of digits and commands notices,
    where the WER pools word errors over the whole set."""
    if not refs:
        return None
    hits = sum(ref.lower().split() == hyp.lower().split() for ref, hyp in zip(refs, hyps))
    return round(hits / len(refs), 4)


def score(refs: list[str], hyps: list[str]) -> dict[str, float | int | None]:
    """WER and CER, and the exact-match rate overall and on the short utterances (None when there are none)."""
    short = [i for i, ref in enumerate(refs) if 1 <= len(ref.split()) <= SHORT_WORDS]
    return {"wer": round(jiwer.wer(refs, hyps), 4), "cer": round(jiwer.cer(refs, hyps), 4), "utterances": len(refs),
            "exact": exact_rate(refs, hyps),
            "exact_short": exact_rate([refs[i] for i in short], [hyps[i] for i in short]),
            "short_utterances": len(short)}


def describe(s: dict) -> str:
    """One line of the printed summary: the error rates, then how many utterances came out exactly right."""
    n = s["short_utterances"]
    short = f", {s['exact_short']:.2%} of the {n} of 1-{SHORT_WORDS} words" if n else ""
    return f"WER {s['wer']:.2%} CER {s['cer']:.2%}, exact {s['exact']:.2%}{short}"


def word_errors(ref: str, hyp: str) -> int:
    """Substitutions + deletions + insertions of ``hyp`` against ``ref``, in words."""
    if not hyp.split():
        return len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


def _group(by_voice: dict[str, list[int]]) -> dict[str, list[int]]:
    """Voices are ``engine:name``: pool them per engine (hundreds of espeak variants are too many to list)."""
    out: dict[str, list[int]] = defaultdict(list)
    for voice, ix in by_voice.items():
        out[voice.split(":")[0]].extend(ix)
    return out


CHANNELS = ("wideband", *G711_SUBTYPES)  # the clip as it is, or through an 8 kHz G.711 telephone line


def telephone_line(wave: np.ndarray, rate: int, encoding: str) -> np.ndarray:
    """``wave`` as the server hears it from a telephone stream of ``encoding`` (``mulaw`` or ``alaw``)."""
    heard = PcmDecoder(encoding).decode(g711_bytes(wave, rate, encoding))
    return resample(heard, TELEPHONE_RATE, rate)


def evaluate(rec: Recognizer, manifest: str | Path, opts: DecodeOptions, batch_size: int = 16,
             oracle: bool = False, channel: str = "wideband") -> dict[str, Any]:
    utts = read_manifest(manifest)
    waves = [decode_audio(u.audio.read_bytes(), rec.sample_rate)[0] for u in utts]
    if channel != "wideband":
        waves = [telephone_line(w, rec.sample_rate, channel) for w in waves]
    order = sorted(range(len(utts)), key=lambda i: waves[i].size)  # similar lengths batch with little padding
    if oracle:  # the best-first list of every finished hypothesis; its first entry is the usual transcript
        opts = replace(opts, n_best=opts.beam_size)
    hyps: dict[int, str] = {}
    beams: dict[int, list[str]] = {}
    start = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, r in zip(idx, rec.transcribe([waves[i] for i in idx], opts)):
            hyps[i] = r.text
            beams[i] = [e.text for e in r.n_best]
    wall = time.perf_counter() - start
    audio_s = sum(w.size for w in waves) / rec.sample_rate
    by_voice: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        by_voice[u.voice].append(i)
    refs = [u.text for u in utts]
    out = {
        "manifest": str(manifest),
        "channel": channel,
        **score(refs, [hyps[i] for i in range(len(utts))]),
        "audio_seconds": round(audio_s, 1),
        "rtf": round(wall / audio_s, 4),
        "per_engine": {e: score([refs[i] for i in ix], [hyps[i] for i in ix]) for e, ix in sorted(_group(by_voice).items())},
        "per_voice": {v: score([refs[i] for i in ix], [hyps[i] for i in ix]) for v, ix in sorted(by_voice.items())},
        "items": [{"audio": str(u.audio), "voice": u.voice, "ref": refs[i], "hyp": hyps[i]} for i, u in enumerate(utts)],
    }
    if oracle:
        best = [min(beams[i], key=lambda h: word_errors(refs[i], h)) for i in range(len(utts))]
        errors = sum(word_errors(ref, h) for ref, h in zip(refs, best))
        out["oracle_wer"] = round(errors / max(1, sum(len(ref.split()) for ref in refs)), 4)
        out["n_best"] = opts.n_best
        for item, h in zip(out["items"], best):
            item["oracle"] = h
    return out


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The server's mapping from settings to decode options, with the flags that were given overriding them."""
    from app.config import Settings

    flags = {"default_beam_size": args.beam, "ctc_weight": args.ctc_weight, "ctc_mode": args.ctc_mode,
             "lm_weight": args.lm_weight, "lm_fusion_weight": args.lm_fusion_weight,
             "lm_fusion_bonus": args.lm_fusion_bonus}
    return Settings(**{k: v for k, v in flags.items() if v is not None}).decoding()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--manifest", required=True, action="append", help="may be given several times")
    # Decoding defaults to exactly what the server would do: its ASR_* settings, through Settings.decoding().
    p.add_argument("--beam", type=int, help="beam width (default: the server's, ASR_DEFAULT_BEAM_SIZE)")
    p.add_argument("--ctc-weight", type=float, help="default: ASR_CTC_WEIGHT")
    p.add_argument("--ctc-mode", choices=["prefix", "rescore"], help="default: ASR_CTC_MODE")
    p.add_argument("--lm-fusion-weight", type=float,
                   help="weight of the word LM inside the beam search (shallow fusion); 0 = off (default: "
                        "ASR_LM_FUSION_WEIGHT)")
    p.add_argument("--lm-fusion-bonus", type=float,
                   help="fusion: added to each completed word's LM log-probability (default: ASR_LM_FUSION_BONUS)")
    p.add_argument("--lm-weight", type=float,
                   help="word LM weight when re-ranking the beam; 0 = none (default: ASR_LM_WEIGHT)")
    p.add_argument("--lm", default="auto", help="ARPA word LM: 'auto' (the one beside the weights, if any), a path, "
                                                "or 'none'")
    p.add_argument("--oracle", action="store_true",
                   help="also report the WER of the best hypothesis in each finished beam (oracle_wer)")
    p.add_argument("--channel", choices=CHANNELS, default="wideband",
                   help="mulaw/alaw: every clip through an 8 kHz G.711 telephone line first, as the server hears it")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"],
                   help="CPU precision, as ASR_DTYPE (int8: dynamically quantized Linear layers)")
    p.add_argument("--report", default=None, help="write the JSON report here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rec = Recognizer.load(a.weights, device="cpu", dtype=a.dtype, lm=None if a.lm == "none" else a.lm)
    opts = decode_options(a)
    reports = []
    for m in a.manifest:
        r = evaluate(rec, m, opts, a.batch_size, a.oracle, a.channel)
        reports.append(r)
        oracle = f", oracle of the {r['n_best']}-best {r['oracle_wer']:.2%}" if a.oracle else ""
        line = "" if a.channel == "wideband" else f" (through an 8 kHz {a.channel} telephone line)"
        print(f"{m}{line}: {describe(r)} over {r['utterances']} utterances, RTF {r['rtf']:.3f}{oracle}")
        for v, s in r["per_engine"].items():
            print(f"  {v}: {describe(s)} ({s['utterances']} utterances)")
    summary = {"weights": str(a.weights), "beam": opts.beam_size, "ctc_weight": opts.ctc_weight,
               "ctc_mode": opts.ctc_mode, "lm_weight": opts.lm_weight if rec.lm else None, "reports": reports}
    if a.report:
        Path(a.report).write_text(json.dumps(summary, indent=2) + "\n")
    last = {"wer": [r["wer"] for r in reports], "cer": [r["cer"] for r in reports],
            "exact": [r["exact"] for r in reports], "exact_short": [r["exact_short"] for r in reports]}
    if a.oracle:
        last["oracle_wer"] = [r["oracle_wer"] for r in reports]
    print(json.dumps(last))


if __name__ == "__main__":
    main()
