"""A checkpoint is one directory: ``model.safetensors``, ``config.json`` and the tokenizer model. Never unpickled."""

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

from .config import FeatureConfig, ModelConfig, from_dict, to_dict
from .tokenizer import Tokenizer
from .transformer import SpeechTransformer

FORMAT = "speech-transformer/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in ckpt.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    if ckpt.tokenizer.path.resolve() != (out / TOKENIZER).resolve():
        shutil.copyfile(ckpt.tokenizer.path, out / TOKENIZER)
    config = {
        "format": FORMAT,
        "name": ckpt.name,
        "model": to_dict(ckpt.model.cfg),
        "features": to_dict(ckpt.features),
        "cmvn": {"mean": ckpt.cmvn_mean.tolist(), "std": ckpt.cmvn_std.tolist()},
        "tokenizer": {"file": TOKENIZER, "vocab_size": ckpt.tokenizer.vocab_size, "sha256": _sha256(out / TOKENIZER)},
        "weights": {"file": WEIGHTS, "sha256": _sha256(out / WEIGHTS)},
        "provenance": ckpt.provenance,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


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
    for part in ("weights", "tokenizer"):
        path = root / config[part]["file"]
        if not path.is_file():
            raise CheckpointError(f"{root}: missing {path.name}")
        if _sha256(path) != config[part]["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt or does not belong to {CONFIG}")
    try:
        model_cfg = from_dict(ModelConfig, config["model"])
        feat_cfg = from_dict(FeatureConfig, config["features"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    tokenizer = Tokenizer(root / config["tokenizer"]["file"])
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
    return Checkpoint(model, tokenizer, feat_cfg, mean, std, config.get("provenance", {}), config.get("name", root.name))
