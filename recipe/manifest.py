"""JSONL manifests: one utterance per line with ``audio`` (relative to the manifest's folder or absolute), ``text``,
``duration`` and optionally ``voice``. LibriSpeech-style corpora converted to this format train the same way."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str
    duration: float
    voice: str = "unknown"


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = Path(row["audio"])
            items.append(
                Utterance(audio if audio.is_absolute() else path.parent / audio, str(row["text"]).strip(),
                          float(row.get("duration", 0.0)), str(row.get("voice", row.get("speaker", "unknown"))))
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: bad manifest line ({e})") from e
    return items


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Atomically write JSON lines (an interrupted run never leaves half a file); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
