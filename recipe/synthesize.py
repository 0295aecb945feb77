"""Synthesise the speech corpus from the sentence lists of ``recipe.text``.

    python -m recipe.synthesize --text data/text --out data/corpus \\
        --train-utts 24000 --dev-utts 200 --test-utts 200 --jobs 2 --seed 0

Splits written (wavs under ``<out>/wav/<split>/``, manifests ``<out>/<split>.jsonl``):
  train        train sentences, seen (non-held-out) voices
  dev_seen     dev sentences, seen voices
  dev_unseen   the same dev sentences, the held-out voice (flite rms)
  test_seen    test sentences, seen voices
  test_unseen  the same test sentences, the held-out voice

The whole plan (sentence, voice and the random synthesis parameters of every
utterance id) is a pure function of the seed, so an interrupted run can be
restarted with the same arguments: ids whose WAV exists and validates are
skipped, and the manifests are rewritten from all valid files at the end.
Each manifest line: {"audio": "wav/<split>/<id>.wav", "text": ..., "duration": s, "voice": "engine:name"}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from recipe.manifest import write_jsonl
from recipe.normalize import word_count
from recipe.text import read_lines
from recipe.voices import Voice, held_out_voices, synthesize, training_voices, validate_wav, voice_by_id

DEFAULT_ENGINE_WEIGHTS = {"espeak": 0.50, "flite": 0.35, "piper": 0.15}
SPLIT_ORDER = ("dev_seen", "dev_unseen", "test_seen", "test_unseen", "train")


@dataclass(frozen=True)
class Utterance:
    """One planned utterance; its WAV lives at ``wav/<split>/<uid>.wav``."""

    uid: str
    split: str
    text: str
    voice: str

    @property
    def rel_audio(self) -> str:
        return f"wav/{self.split}/{self.uid}.wav"


class VoicePicker:
    """Draws voices with given engine weights, spread evenly over each engine's voices.

    Within an engine the voices are dealt from a shuffled deck, so after k full
    decks every voice has been used exactly k times.
    """

    def __init__(self, voices: list[Voice], weights: dict[str, float], rng: random.Random) -> None:
        self.rng = rng
        self.by_engine: dict[str, list[Voice]] = {}
        for v in voices:
            self.by_engine.setdefault(v.engine, []).append(v)
        self.engines = [e for e in weights if weights[e] > 0 and e in self.by_engine]
        if not self.engines:
            raise ValueError("no voices for the requested engine weights")
        self.weights = [weights[e] for e in self.engines]
        self.decks: dict[str, list[Voice]] = {e: [] for e in self.engines}

    def pick(self, avoid: set[str] = frozenset()) -> Voice:  # type: ignore[assignment]
        engine = self.rng.choices(self.engines, weights=self.weights)[0]
        deck = self.decks[engine]
        for _ in range(len(self.by_engine[engine]) + 1):
            if not deck:
                deck.extend(self.by_engine[engine])
                self.rng.shuffle(deck)
            v = deck.pop()
            if v.id not in avoid:
                return v
            deck.insert(0, v)  # keep it for later, try the next card
        return v  # engine has fewer voices than repetitions of this sentence


def plan_corpus(
    text_dir: Path, n_train: int, n_dev: int, n_test: int, seed: int, weights: dict[str, float]
) -> list[Utterance]:
    """Deterministic list of every utterance to synthesise.

    Each split has its own generators keyed by the seed alone, and each is
    consumed sequentially, so a larger count extends the plan without changing
    the utterances already planned (safe to resume with more --train-utts).
    """
    rng = random.Random(f"{seed}:train-order")
    seen = training_voices()
    unseen = held_out_voices()
    plan: list[Utterance] = []

    # Train: walk the sentences in a fresh shuffled order each pass; a sentence
    # that comes round again gets a voice it has not had yet.
    train = read_lines(text_dir / "train.txt")
    picker = VoicePicker(seen, weights, random.Random(f"{seed}:train-voices"))
    used: dict[int, set[str]] = {}
    order: list[int] = []
    for i in range(n_train):
        if not order:
            order = list(range(len(train)))
            rng.shuffle(order)
        s = order.pop()
        v = picker.pick(used.setdefault(s, set()))
        used[s].add(v.id)
        plan.append(Utterance(f"train-{i:06d}", "train", train[s], v.id))

    for name, count in (("dev", n_dev), ("test", n_test)):
        sents = read_lines(text_dir / f"{name}.txt")
        picker = VoicePicker(seen, weights, random.Random(f"{seed}:{name}-voices"))
        for i in range(count):
            text = sents[i % len(sents)]
            plan.append(Utterance(f"{name}_seen-{i:06d}", f"{name}_seen", text, picker.pick().id))
            held = unseen[i % len(unseen)]
            plan.append(Utterance(f"{name}_unseen-{i:06d}", f"{name}_unseen", text, held.id))
    return plan


def utterance_rng(seed: int, uid: str) -> random.Random:
    """Per-utterance generator: same parameters whichever worker runs it, in whatever order."""
    return random.Random(f"{seed}:{uid}")


_OUT: Path | None = None
_SEED = 0


def _init_worker(out: Path, seed: int) -> None:
    global _OUT, _SEED
    _OUT, _SEED = out, seed
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _work(u: Utterance) -> tuple[Utterance, float | None, bool, str]:
    """Synthesise one utterance unless a valid WAV is already there.

    Returns (utterance, duration or None, freshly made, error message).
    """
    assert _OUT is not None
    path = _OUT / u.rel_audio
    n = word_count(u.text)
    if path.exists():
        dur = validate_wav(path, n)
        if dur is not None:
            return u, dur, False, ""
    try:
        synthesize(voice_by_id(u.voice), u.text, path, utterance_rng(_SEED, u.uid))
    except Exception as e:  # noqa: BLE001 - one bad utterance must not stop the run
        return u, None, True, f"{type(e).__name__}: {e}"
    dur = validate_wav(path, n)
    if dur is None:
        path.unlink(missing_ok=True)
        return u, None, True, "invalid output (too short, too long or silent)"
    return u, dur, True, ""


def write_manifest(path: Path, rows: Iterable[tuple[Utterance, float]]) -> int:
    """One JSONL manifest; audio paths are relative to its folder."""
    return write_jsonl(path, ({"audio": u.rel_audio, "text": u.text, "duration": round(dur, 3), "voice": u.voice}
                              for u, dur in sorted(rows, key=lambda r: r[0].uid)))


def drop_stale_audio(out: Path, plan: list[Utterance]) -> int:
    """Delete audio an earlier run made for another sentence or voice under the same file name.

    Resuming skips every valid WAV already there, so a changed sentence list (which reshuffles the
    train plan) would otherwise pair old audio with new text. The plan ledger written at each start
    says what every file was made for; a corpus without one falls back to its manifests. A file
    neither lists is of unknown origin and is made again. Entries for files this plan does not cover
    (a dev/test-only run on a corpus with a train split) stay in the ledger, so a later run with the
    full plan finds them again instead of making them anew.
    """
    ledger = out / "synthesis_plan.jsonl"
    sources = [ledger] if ledger.exists() else sorted(out.glob("*.jsonl"))
    made_for: dict[str, tuple[str, str]] = {}
    for src in sources:
        for line in src.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            made_for[row["audio"]] = (row["text"], row["voice"])
    dropped = 0
    for u in plan:
        path = out / u.rel_audio
        if path.exists() and made_for.get(u.rel_audio) != (u.text, u.voice):
            path.unlink()
            dropped += 1
    planned = {u.rel_audio for u in plan}
    entries = [{"audio": u.rel_audio, "text": u.text, "voice": u.voice} for u in plan]
    entries += [{"audio": audio, "text": text, "voice": voice} for audio, (text, voice) in sorted(made_for.items())
                if audio not in planned and (out / audio).exists()]
    write_jsonl(ledger, entries)
    return dropped


def run(
    text_dir: Path,
    out: Path,
    n_train: int,
    n_dev: int,
    n_test: int,
    jobs: int = 2,
    seed: int = 0,
    weights: dict[str, float] | None = None,
    checkpoint_every: int = 2000,
    progress: bool = True,
) -> dict[str, int]:
    """Synthesise (or resume) the corpus; returns valid utterance counts per split."""
    plan = plan_corpus(text_dir, n_train, n_dev, n_test, seed, weights or DEFAULT_ENGINE_WEIGHTS)
    # Small evaluation splits first, so they are usable early; train last.
    plan.sort(key=lambda u: SPLIT_ORDER.index(u.split))
    out.mkdir(parents=True, exist_ok=True)
    stale = drop_stale_audio(out, plan)
    if stale:
        print(f"{stale} files were made for another sentence or voice: making them again", flush=True)
    done: dict[str, list[tuple[Utterance, float]]] = {s: [] for s in SPLIT_ORDER}
    made = skipped = failed = 0
    audio_s = 0.0
    t0 = time.time()
    errlog = out / "failures.log"

    ctx = get_context("fork")
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(out, seed)) as pool, open(errlog, "a") as ef:
        it = pool.imap_unordered(_work, plan, chunksize=8)
        bar = tqdm(it, total=len(plan), unit="utt", disable=not progress, mininterval=5, file=sys.stderr)
        for k, (u, dur, fresh, err) in enumerate(bar, 1):
            if dur is None:
                failed += 1
                ef.write(f"{u.uid}\t{u.voice}\t{err}\t{u.text}\n")
                ef.flush()
            else:
                done[u.split].append((u, dur))
                if fresh:
                    made += 1
                    audio_s += dur
                else:
                    skipped += 1
            if fresh and made:
                wall = time.time() - t0
                bar.set_postfix(made=made, fail=failed, xrt=f"{audio_s / max(wall, 1e-6):.0f}", refresh=False)
            if checkpoint_every and k % checkpoint_every == 0:
                # Partial manifests let training start before synthesis ends.
                for split, rows in done.items():
                    if rows:
                        write_manifest(out / f"{split}.jsonl", rows)
        bar.close()

    counts = {split: write_manifest(out / f"{split}.jsonl", rows) for split, rows in done.items()}
    wall = time.time() - t0
    hours = sum(d for rows in done.values() for _, d in rows) / 3600
    print(
        f"done in {wall:.0f}s: made {made} ({audio_s / 3600:.2f} h audio, {audio_s / max(wall, 1e-6):.0f}x real time), "
        f"skipped {skipped} existing, failed {failed}; corpus {hours:.2f} h; counts {counts}",
        flush=True,
    )
    return counts


def _parse_weights(s: str) -> dict[str, float]:
    out = {}
    for part in s.split(","):
        k, v = part.split("=")
        out[k.strip()] = float(v)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, required=True, help="folder with train.txt, dev.txt, test.txt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-utts", type=int, required=True)
    ap.add_argument("--dev-utts", type=int, default=200, help="per dev sub-split (seen and unseen)")
    ap.add_argument("--test-utts", type=int, default=200, help="per test sub-split (seen and unseen)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--engine-weights",
        type=_parse_weights,
        default=DEFAULT_ENGINE_WEIGHTS,
        help="e.g. espeak=0.5,flite=0.35,piper=0.15",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run(
        args.text,
        args.out,
        args.train_utts,
        args.dev_utts,
        args.test_utts,
        jobs=args.jobs,
        seed=args.seed,
        weights=args.engine_weights,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
