"""Two beam-search settings side by side on the same utterances: how many transcripts change, WER, and time.

    python -m bench.search --manifest data/corpus/test_seen.jsonl --a end_margin=0 --b end_margin=10

``--a`` is the reference (default: the server's decode options), ``--b`` the candidate; each is a comma-separated
list of :class:`~model.decoding.DecodeOptions` fields laid over the server's defaults. Each batch is decoded with
A then B, so both see the same machine load; the time is the search's whole ``transcribe``. The last line is one
JSON object: per manifest ``identical`` (share of B's transcripts equal to A's), ``wer_a``, ``wer_b`` and
``speedup`` (A's time over B's), and the same pooled over every manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jiwer
import torch

from model.audio import decode_audio
from model.decoding import DecodeOptions
from model.recognizer import Recognizer
from recipe.manifest import read_manifest

from .common import emit, print_table


def parse_overrides(text: str) -> dict[str, object]:
    """``"beam_size=8,end_margin=10"`` -> typed DecodeOptions fields (the type each field has)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(DecodeOptions)}
    out: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"error: {key!r} is not a decode option ({', '.join(types)})")
        kind = types[key]
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def compare(rec: Recognizer, manifest: Path, a: DecodeOptions, b: DecodeOptions, batch_size: int) -> dict:
    utts = read_manifest(manifest)
    waves = [decode_audio(u.audio.read_bytes(), rec.sample_rate)[0] for u in utts]
    order = sorted(range(len(utts)), key=lambda i: waves[i].size)
    hyps: dict[str, dict[int, str]] = {"a": {}, "b": {}}
    seconds = {"a": 0.0, "b": 0.0}
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for name, opts in (("a", a), ("b", b)):
            start = time.perf_counter()
            results = rec.transcribe([waves[i] for i in idx], opts)
            seconds[name] += time.perf_counter() - start
            hyps[name].update((i, r.text) for i, r in zip(idx, results))
    refs = [u.text for u in utts]
    ha, hb = ([h[i] for i in range(len(utts))] for h in (hyps["a"], hyps["b"]))
    return {"manifest": str(manifest), "utterances": len(utts),
            "identical": round(sum(x == y for x, y in zip(ha, hb)) / len(utts), 4),
            "wer_a": round(jiwer.wer(refs, ha), 4), "wer_b": round(jiwer.wer(refs, hb), 4),
            "seconds_a": round(seconds["a"], 3), "seconds_b": round(seconds["b"], 3),  # to the ms: B can take 0.06 s
            "speedup": round(seconds["a"] / seconds["b"], 3),
            "changed": [{"ref": r, "a": x, "b": y} for r, x, y in zip(refs, ha, hb) if x != y]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--manifest", action="append", required=True, type=Path)
    p.add_argument("--a", default="", help="reference settings, e.g. end_margin=0 (default: the server's)")
    p.add_argument("--b", default="", help="candidate settings")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show-changed", action="store_true", help="print every transcript that differs")
    args = p.parse_args()
    from app.config import Settings

    torch.set_num_threads(args.threads)
    base = Settings().decoding()
    a = dataclasses.replace(base, **parse_overrides(args.a))
    b = dataclasses.replace(base, **parse_overrides(args.b))
    rec = Recognizer.load(args.weights)
    rec.transcribe([torch.zeros(rec.sample_rate)], a)  # warm-up
    rows = [compare(rec, m, a, b, args.batch_size) for m in args.manifest]
    if args.show_changed:
        for row in rows:
            for c in row["changed"]:
                print(f"REF {c['ref']}\n  A {c['a']}\n  B {c['b']}")
    print_table(rows, ["manifest", "utterances", "identical", "wer_a", "wer_b", "seconds_a", "seconds_b", "speedup"])
    n = sum(r["utterances"] for r in rows)
    emit({"a": args.a, "b": args.b, "batch_size": args.batch_size,
          "identical": round(sum(r["identical"] * r["utterances"] for r in rows) / n, 4),
          "speedup": round(sum(r["seconds_a"] for r in rows) / sum(r["seconds_b"] for r in rows), 3),
          "sets": [{k: v for k, v in r.items() if k != "changed"} for r in rows]})


if __name__ == "__main__":
    main()
