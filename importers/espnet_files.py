"""Finding an ESPnet2 model's files: the zoo's unpacked layout, its zip, and configs with stale paths.

A model-zoo package holds ``exp/<asr_train_*>/config.yaml`` with the ``.pth`` beside it, and the files the config
names (``normalize_conf.stats_file``, ``bpemodel``) relative to the package root. Configs written by a trainer
often keep that machine's absolute paths instead; those are found by their trailing path components, then by
name.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import ImportFailure

# The zoo names its averaged checkpoint after the criterion; prefer those over other .pth files beside the config.
MODEL_FILE_PREFERENCE = ("valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.ave.pth", "valid.loss.best.pth")
MAX_UNPACKED_BYTES = 8 << 30  # a zip that claims more than this is refused before anything is written


@dataclass(frozen=True)
class EspnetFiles:
    root: Path  # the package root: where ``exp/`` is
    config_file: Path
    config: dict[str, Any]
    model_file: Path
    stats_file: Path | None  # global_mvn's feats_stats.npz (None for other normalisations)
    bpemodel: Path


def unpack(archive: Path, into: Path) -> Path:
    """Extract a zoo zip into ``into`` (refusing members that would land outside it); returns ``into``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise ImportFailure(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
            base = into.resolve()
            for m in members:
                if not (base / m.filename).resolve().is_relative_to(base):
                    raise ImportFailure(f"{archive}: member {m.filename!r} points outside the archive")
            zf.extractall(into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise ImportFailure(f"{archive}: not a readable zip archive ({e})") from e
    return into


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ImportFailure(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") from e
    if not isinstance(config, dict):
        raise ImportFailure(f"{path}: not an ESPnet config (a YAML mapping)")
    return config


def find_config(root: Path) -> Path:
    """The ``exp/*/config.yaml`` with a ``.pth`` beside it; exactly one must qualify."""
    candidates = sorted(p for p in root.rglob("config.yaml") if any(p.parent.glob("*.pth")))
    if not candidates:
        raise ImportFailure(f"{root}: no config.yaml with a .pth beside it (give --config and --model-file)")
    asr = [p for p in candidates if p.parent.name.startswith("asr_train")] or candidates
    if len(asr) > 1:
        raise ImportFailure(f"{root}: several model configs ({', '.join(str(p.relative_to(root)) for p in asr)}); "
                            "choose one with --config")
    return asr[0]


def find_model_file(config_file: Path) -> Path:
    beside = sorted(config_file.parent.glob("*.pth"))
    for name in MODEL_FILE_PREFERENCE:
        if (config_file.parent / name).is_file():
            return config_file.parent / name
    if len(beside) == 1:
        return beside[0]
    raise ImportFailure(f"{config_file.parent}: {len(beside)} .pth files and none of {MODEL_FILE_PREFERENCE}; "
                        "choose one with --model-file")


def resolve(recorded: str, root: Path, field: str) -> Path:
    """A path the config recorded, found under ``root``: as written, relative to ``root``, by its trailing
    components (a stale absolute path from the trainer's machine), then by its file name alone if unique."""
    path = Path(recorded)
    tails = [Path(*path.parts[i:]) for i in range(len(path.parts)) if not Path(*path.parts[i:]).is_absolute()]
    for candidate in [path, *(root / tail for tail in tails)]:
        if candidate.is_file():
            return candidate
    named = [p for p in root.rglob(path.name) if p.is_file()]
    if len(named) == 1:
        return named[0]
    raise ImportFailure(f"{field}: {recorded} is not under {root}"
                        + (f" ({len(named)} files are named {path.name})" if named else ""))


def _override(path: Path | None, flag: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ImportFailure(f"{flag} {path}: no such file")
    return path


def locate(root: Path, config: Path | None = None, model_file: Path | None = None, stats: Path | None = None,
           bpemodel: Path | None = None) -> EspnetFiles:
    """Every file the import needs, from the package at ``root`` and the ``--config``/``--model-file``/``--stats``/
    ``--bpemodel`` overrides."""
    config_file = _override(config, "--config") or find_config(root)
    cfg = _load_yaml(config_file)
    if config is not None and not any(root.rglob("exp")):
        root = config_file.parent  # a bare config: its recorded paths are looked for around it
    model = _override(model_file, "--model-file") or find_model_file(config_file)
    stats_file = _override(stats, "--stats")
    if stats_file is None and cfg.get("normalize") == "global_mvn":
        recorded = (cfg.get("normalize_conf") or {}).get("stats_file")
        if not recorded:
            raise ImportFailure(f"{config_file}: normalize_conf.stats_file is missing (give --stats)")
        stats_file = resolve(str(recorded), root, "normalize_conf.stats_file")
    bpe = _override(bpemodel, "--bpemodel")
    if bpe is None:
        if not cfg.get("bpemodel"):
            raise ImportFailure(f"{config_file}: bpemodel is missing (give --bpemodel)")
        bpe = resolve(str(cfg["bpemodel"]), root, "bpemodel")
    return EspnetFiles(root, config_file, cfg, model, stats_file, bpe)
