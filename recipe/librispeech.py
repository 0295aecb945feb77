"""LibriSpeech-style corpus -> JSONL manifest, so a real corpus trains with the same ``recipe.train`` command.

    python -m recipe.librispeech --root LibriSpeech/train-clean-100 --out data/librispeech/train.jsonl

LibriSpeech keeps ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` files whose lines are ``UTTERANCE-ID TEXT``, next to
``UTTERANCE-ID.flac``. Any corpus laid out that way (other audio extensions included) converts. Transcripts are
already normalised there (upper case, apostrophes); they are lower-cased to this project's transcript form.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import soundfile as sf

from .manifest import write_jsonl

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3")
TRANSCRIPT_FORM = re.compile(r"[a-z']+( [a-z']+)*")


def _find_audio(folder: Path, utt_id: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        if (folder / f"{utt_id}{ext}").is_file():
            return folder / f"{utt_id}{ext}"
    return None


def convert(root: Path, out: Path) -> tuple[list[dict], list[str]]:
    """Rows for every utterance under ``root`` (audio paths relative to the manifest), and what was skipped, why."""
    rows, skipped = [], []
    for trans in sorted(root.rglob("*.trans.txt")):
        speaker = trans.name.split("-")[0]
        for n, line in enumerate(trans.read_text().splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            text = " ".join(text.lower().split())
            audio = _find_audio(trans.parent, utt_id)
            if audio is None:
                skipped.append(f"{trans}:{n}: no audio file for {utt_id}")
            elif not TRANSCRIPT_FORM.fullmatch(text):
                skipped.append(f"{trans}:{n}: transcript is not lower-case words: {text[:60]!r}")
            else:
                rows.append({"audio": os.path.relpath(audio.resolve(), out.parent.resolve()), "text": text,
                             "duration": round(sf.info(str(audio)).duration, 3), "voice": speaker, "id": utt_id})
    return rows, skipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="a folder with SPEAKER/CHAPTER/*.trans.txt below it")
    p.add_argument("--out", type=Path, required=True, help="the JSONL manifest to write")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    rows, skipped = convert(a.root, a.out)
    for why in skipped[:20]:
        log.warning("skipped %s", why)
    if not rows:
        raise SystemExit(f"no utterances found under {a.root} (expected */*/*.trans.txt with audio beside them)")
    write_jsonl(a.out, rows)
    hours = sum(r["duration"] for r in rows) / 3600
    log.info("%d utterances, %.2f h, %d speakers -> %s (%d skipped)", len(rows), hours,
             len({r["voice"] for r in rows}), a.out, len(skipped))


if __name__ == "__main__":
    main()
