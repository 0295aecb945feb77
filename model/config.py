"""One place that describes the whole network and its input features.

Both dataclasses are written into a checkpoint's ``config.json`` so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class FeatureConfig:
    """Kaldi-style log-mel filterbank settings (the paper's 80-dim, 25 ms / 10 ms at 16 kHz)."""

    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0

    @property
    def win_length(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def hop_length(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the Speech-Transformer. The paper's model is ``ModelConfig(d_model=256, n_heads=4,
    encoder_layers=12, decoder_layers=6, d_ff=2048)``."""

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    conv_channels: int = 32
    n_mels: int = 80
    max_target_positions: int = 512
    ctc: bool = True
    pad_id: int = 0
    unk_id: int = 1
    sos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.vocab_size <= max(self.pad_id, self.unk_id, self.sos_id, self.eos_id):
            raise ValueError(f"vocab_size={self.vocab_size} is too small for the special tokens")


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build ``cls`` from ``data``, refusing keys this version does not know (a mismatched checkpoint)."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in checkpoint: {sorted(unknown)}")
    return cls(**data)
