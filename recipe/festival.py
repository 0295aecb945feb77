"""Evaluation-only speech from Festival voices, which the recipe never trains, tunes or selects checkpoints on.

    python -m recipe.festival --text data/text/test.txt --out data/festival        # then recipe.evaluate / bench.compare

Writes 16 kHz mono WAVs and ``test.jsonl`` (``audio``, ``text``, ``duration``, ``voice`` = ``festival:NAME``): an
independent check on voices the training corpus never held. Debian's English voices: ``ked_diphone``
(festvox-kdlpc16k, a speaker no training engine has), ``kal_diphone`` (festvox-kallpc16k, the diphone database
flite's seen ``kal`` voices are built from) and ``cmu_us_slt_arctic_hts`` (festvox-us-slt-hts, an HTS voice of the
speaker behind flite's seen ``slt``, 32 kHz). Pitfalls: ``text2wave`` exits 0 for an unknown voice (it prints
``SIOD ERROR`` and writes nothing) and writes an empty file for empty text, so every file is checked.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from recipe.manifest import write_jsonl
from recipe.normalize import word_count
from recipe.text import read_lines
from recipe.voices import save_16k, validate_wav, wav_bytes_to_float

VOICES = ("ked_diphone", "kal_diphone", "cmu_us_slt_arctic_hts")
PEAK_SEED = 0  # the level of each file is drawn from a seeded generator, so a re-run writes the same audio


def speak(voice: str, text: str, out_wav: Path) -> float:
    """Speak ``text`` with Festival ``voice`` into a 16 kHz WAV; returns its duration or raises RuntimeError."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty text: text2wave would write an empty file and exit 0")
    with tempfile.TemporaryDirectory(prefix="festival") as td:
        src, raw = Path(td) / "in.txt", Path(td) / "out.wav"
        src.write_text(text + "\n")
        r = subprocess.run(["text2wave", "-eval", f"(voice_{voice})", str(src), "-o", str(raw)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or "SIOD ERROR" in r.stderr or not raw.is_file() or raw.stat().st_size <= 44:
            raise RuntimeError(f"festival voice {voice!r} produced no audio: {r.stderr.strip()[-200:]}")
        audio, sr = wav_bytes_to_float(raw.read_bytes())
    save_16k(audio, sr, out_wav, random.Random(f"{PEAK_SEED}:{out_wav.name}"))
    duration = validate_wav(out_wav, word_count(text))
    if duration is None:
        out_wav.unlink(missing_ok=True)
        raise RuntimeError(f"festival voice {voice!r}: implausible audio for {text!r}")
    return duration


def build(text_file: str | Path, out: str | Path, voices: tuple[str, ...] = VOICES, limit: int = 0,
          jobs: int = 2) -> Path:
    """Every sentence in every voice; files already there and valid are kept (a re-run resumes)."""
    out = Path(out)
    sentences = read_lines(Path(text_file))
    sentences = sentences[:limit] if limit else sentences
    plan = [(voice, i, text) for voice in voices for i, text in enumerate(sentences)]

    def one(item: tuple[str, int, str]) -> dict:
        voice, i, text = item
        wav = out / "wav" / voice / f"{i:05d}.wav"
        duration = validate_wav(wav, word_count(text)) if wav.is_file() else None
        if duration is None:
            duration = speak(voice, text, wav)
        return {"audio": str(wav.relative_to(out)), "text": text, "duration": round(duration, 3),
                "voice": f"festival:{voice}"}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # text2wave runs in subprocesses
        rows = list(tqdm(pool.map(one, plan), total=len(plan), desc="festival", unit="utt"))
    manifest = out / "test.jsonl"
    write_jsonl(manifest, rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="normalised sentences, one per line (the test split's)")
    p.add_argument("--out", required=True)
    p.add_argument("--voices", nargs="+", default=list(VOICES))
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    manifest = build(a.text, a.out, tuple(a.voices), a.limit, a.jobs)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
