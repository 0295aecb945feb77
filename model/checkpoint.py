"""A checkpoint is one directory: ``model.safetensors``, ``config.json``, the tokenizer model and an optional word
LM (an ARPA file). ``config.json`` names each file with its sha256, so a file that does not belong is refused
rather than silently used. Never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import NORMALIZATIONS, FeatureConfig, ModelConfig, from_dict, to_dict
from .tokenizer import Tokenizer
from .transformer import SpeechTransformer

FORMAT = "speech-transformer/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"
# Word LM names looked for beside the weights when config.json names none (checkpoints older than its "lm" entry).
LM_FILES = ("lm.arpa.xz", "lm.arpa.gz", "lm.arpa")


class CheckpointError(ValueError):
    """The directory is not a usable checkpoint for this code (missing, corrupt or mismatched)."""


@dataclass
class Checkpoint:
    model: SpeechTransformer
    tokenizer: Tokenizer
    features: FeatureConfig
    cmvn_mean: torch.Tensor
    cmvn_std: torch.Tensor
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = "speech-transformer"
    lm: Path | None = None  # the word LM file that goes with these weights; saving copies it and records its sha256
    cmvn_kind: str = "global"  # model.config.NORMALIZATIONS; "utterance" ignores cmvn_mean/cmvn_std


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def word_lm_beside(directory: str | Path) -> Path | None:
    """The first of `LM_FILES` in ``directory``: how checkpoints without an ``lm`` entry find their word LM."""
    candidates = (Path(directory) / name for name in LM_FILES)
    return next((path for path in candidates if path.is_file()), None)


def _file_entry(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": file_sha256(path)}


def _verified(root: Path, entry: dict[str, str]) -> Path:
    path = root / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{root}: missing {path.name}")
    if file_sha256(path) != entry["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt or does not belong to {CONFIG}")
    return path


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` into ``directory``, copying its tokenizer and word LM there when they live elsewhere."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in ckpt.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    if ckpt.tokenizer.path.resolve() != (out / TOKENIZER).resolve():
        shutil.copyfile(ckpt.tokenizer.path, out / TOKENIZER)
    if ckpt.lm is not None and ckpt.lm.resolve() != (out / ckpt.lm.name).resolve():
        shutil.copyfile(ckpt.lm, out / ckpt.lm.name)
    config = {
        "format": FORMAT,
        "name": ckpt.name,
        "model": to_dict(ckpt.model.cfg),
        "features": to_dict(ckpt.features),
        "cmvn": {**({"kind": ckpt.cmvn_kind} if ckpt.cmvn_kind != "global" else {}),
                 "mean": ckpt.cmvn_mean.tolist(), "std": ckpt.cmvn_std.tolist()},
        "tokenizer": {"file": TOKENIZER, "vocab_size": ckpt.tokenizer.vocab_size, "sha256": file_sha256(out / TOKENIZER),
                      **({"token_list": ckpt.tokenizer.token_list} if ckpt.tokenizer.token_list is not None else {})},
        "weights": _file_entry(out / WEIGHTS),
        **({"lm": _file_entry(out / ckpt.lm.name)} if ckpt.lm is not None else {}),
        "provenance": ckpt.provenance,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def attach_word_lm(directory: str | Path, lm: str | Path) -> Path:
    """Make ``lm`` the word LM of the checkpoint in ``directory`` (copied there if it lives elsewhere).

    For an LM estimated after the export (``recipe.lm --out DIR/lm.arpa.gz``): ``config.json`` then names the
    new file and its sha256, so it is not refused as a file that does not belong.
    """
    root, src = Path(directory), Path(lm)
    config = json.loads((root / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{root / CONFIG}: format {config.get('format')!r}, this code reads {FORMAT!r}")
    if src.resolve() != (root / src.name).resolve():
        shutil.copyfile(src, root / src.name)
    provenance = config.pop("provenance", None)  # kept last, where save_checkpoint puts it
    config["lm"] = _file_entry(root / src.name)
    if provenance is not None:
        config["provenance"] = provenance
    (root / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return root / src.name


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    root = Path(directory)
    cfg_path = root / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: no {CONFIG} (is this a checkpoint directory?)")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: format {config.get('format')!r}, this code reads {FORMAT!r}")
    _verified(root, config["weights"])
    _verified(root, config["tokenizer"])
    lm = _verified(root, config["lm"]) if "lm" in config else word_lm_beside(root)
    try:
        model_cfg = from_dict(ModelConfig, config["model"])
        feat_cfg = from_dict(FeatureConfig, config["features"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    try:
        tokenizer = Tokenizer(root / config["tokenizer"]["file"], config["tokenizer"].get("token_list"))
    except (ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{root / config['tokenizer']['file']}: {e}") from e
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} pieces but the model expects {model_cfg.vocab_size}")
    model = SpeechTransformer(model_cfg)
    try:
        state = load_file(str(root / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{root / WEIGHTS}: does not match the configured architecture: {e}") from e
    model.to(device).eval()
    mean, std = torch.tensor(config["cmvn"]["mean"]), torch.tensor(config["cmvn"]["std"])
    if mean.shape != (feat_cfg.n_mels,) or std.shape != (feat_cfg.n_mels,):
        raise CheckpointError(f"{cfg_path}: CMVN statistics do not have {feat_cfg.n_mels} entries")
    cmvn_kind = config["cmvn"].get("kind", "global")
    if cmvn_kind not in NORMALIZATIONS:
        raise CheckpointError(f"{cfg_path}: cmvn.kind={cmvn_kind!r}: expected one of {NORMALIZATIONS}")
    name = config.get("name", root.name)
    return Checkpoint(model, tokenizer, feat_cfg, mean, std, config.get("provenance", {}), name, lm, cmvn_kind)
