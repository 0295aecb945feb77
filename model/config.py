"""One place that describes the whole network and its input features.

Both dataclasses are written into a checkpoint's ``config.json`` so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


FILTERBANKS = ("kaldi", "stft")
NORMALIZATIONS = ("global", "utterance")  # CMVN from training-set statistics, or of each utterance's own frames
ACTIVATIONS = ("relu", "gelu", "swish")
# Front-ends by name: the (kernel, stride) of each Conv2d along time and frequency. "conv2d" is the paper's 4x;
# ESPnet names the others by their rate.
SUBSAMPLINGS: dict[str, tuple[tuple[int, int], ...]] = {
    "conv2d": ((3, 2), (3, 2)),
    "conv2d6": ((3, 2), (5, 3)),
    "conv2d8": ((3, 2), (3, 2), (3, 2)),
}


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank settings (the paper's 80-dim, 25 ms / 10 ms at 16 kHz).

    ``kind="kaldi"`` is ``torchaudio.compliance.kaldi.fbank`` (our own models: int16-scaled samples, a povey
    window, pre-emphasis, edge frames snipped). ``kind="stft"`` is ESPnet's default front-end: a centred
    ``torch.stft`` of the [-1, 1] samples with a Hann window, Slaney mel filters from ``low_freq`` to
    ``high_freq`` and a natural log floored at 1e-10. ``n_fft`` and ``window`` are the STFT's (Kaldi's FFT size
    is the window rounded up to a power of two)."""

    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    kind: str = "kaldi"
    high_freq: float = 0.0  # <= 0: that far below Nyquist (Kaldi's convention)
    n_fft: int = 512
    window: str = "hann"
    center: bool = True

    def __post_init__(self) -> None:
        if self.kind not in FILTERBANKS:
            raise ValueError(f"features.kind={self.kind!r}: expected one of {FILTERBANKS}")

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def top_freq(self) -> float:
        """The upper edge of the mel filters in Hz."""
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2 + self.high_freq

    @property
    def centred(self) -> bool:
        """Frames centred on ``i * hop`` (padded edges) rather than starting there (Kaldi's snipped edges)."""
        return self.kind == "stft" and self.center

    def frames(self, samples: int) -> int:
        """Filterbank frames from ``samples`` samples."""
        if self.centred:
            return 1 + samples // self.hop_length
        return max(0, (samples - self.frame_samples) // self.hop_length + 1)

    def samples_for(self, frames: int) -> int:
        """The fewest samples that give ``frames`` frames."""
        if self.centred:
            return max(1, (frames - 1) * self.hop_length)
        return self.frame_samples + (frames - 1) * self.hop_length

    @property
    def frame_samples(self) -> int:
        """Samples under one frame: the window (Kaldi), the FFT (an uncentred STFT)."""
        return self.win_length if self.kind == "kaldi" else self.n_fft


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
    pad_id: int = 0  # padding, and the CTC blank
    unk_id: int = 1
    sos_id: int = 2
    eos_id: int = 3  # may equal sos_id (ESPnet's <sos/eos>)
    # What ESPnet's Transformer may set differently from our own models (model/importers: espnet).
    subsampling: str = "conv2d"
    layer_norm_eps: float = 1e-5
    ffn_activation: str = "relu"
    tied_output: bool = True  # the output layer is the embedding's transpose; False: its own Linear with a bias

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(f"subsampling={self.subsampling!r}: expected one of {tuple(SUBSAMPLINGS)}")
        if self.ffn_activation not in ACTIVATIONS:
            raise ValueError(f"ffn_activation={self.ffn_activation!r}: expected one of {ACTIVATIONS}")
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
