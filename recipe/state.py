"""Resumable training state in safetensors + JSON (model, AdamW moments, step counters): nothing is pickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_state(directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous().reshape(val.shape if torch.is_tensor(val) else ())
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    tmp_w, tmp_j = directory / "state.safetensors.tmp", directory / "state.json.tmp"
    save_file(tensors, str(tmp_w))
    tmp_j.write_text(json.dumps({"param_groups": groups, **info}, indent=1))
    tmp_w.replace(directory / "state.safetensors")
    tmp_j.replace(directory / "state.json")


def load_state(directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    if not (directory / "state.json").exists():
        return None
    meta = json.loads((directory / "state.json").read_text())
    tensors = load_file(str(directory / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def average_snapshots(paths: list[Path], mix: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise mean of several weight snapshots (checkpoint averaging); ``mix`` weights them (normalised)."""
    mix = mix or [1.0] * len(paths)
    if len(mix) != len(paths) or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError("give one non-negative weight per snapshot, not all zero")
    avg: dict[str, torch.Tensor] = {}
    for p, w in zip(paths, mix):
        for k, v in load_file(str(p)).items():
            avg[k] = avg.get(k, 0) + w * v.double()
    return {k: (v / sum(mix)).float() for k, v in avg.items()}
