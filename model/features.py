"""Batched log-mel filterbanks on the model's device, and the feature normalisations.

Two kinds (`FeatureConfig.kind`): :class:`FilterbankFeatures` matches ``torchaudio.compliance.kaldi.fbank``, which
handles one utterance at a time on the CPU, on a whole padded ``(B, N)`` batch with the same window, pre-emphasis,
DC removal, FFT size and mel banks (taken from torchaudio itself); :class:`StftFeatures` matches ESPnet's default
front-end. Both return per-utterance frame counts so padding never leaks into features.
"""

from __future__ import annotations

import torch
from torch import nn
import torchaudio.functional as taf
from torchaudio.compliance import kaldi

from .config import FeatureConfig

INT16_SCALE = 32768.0  # kaldi convention: features of int16-scaled samples


def num_frames(num_samples: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """`FeatureConfig.frames` of each length: kaldi's ``snip_edges=True`` counts only whole windows."""
    if cfg.centred:
        return torch.div(num_samples, cfg.hop_length, rounding_mode="floor") + 1
    frames = torch.div(num_samples - cfg.frame_samples, cfg.hop_length, rounding_mode="floor") + 1
    return frames.clamp(min=0)


def mel_banks(cfg: FeatureConfig, n_fft: int, warp: float = 1.0) -> torch.Tensor:
    """Kaldi mel filters, ``(n_mels, n_fft // 2 + 1)``; ``warp`` != 1 gives VTLN/VTLP frequency warping."""
    banks, _ = kaldi.get_mel_banks(cfg.n_mels, n_fft, float(cfg.sample_rate), cfg.low_freq, 0.0, 100.0, -500.0, warp)
    return torch.nn.functional.pad(banks, (0, 1))


class FilterbankFeatures(nn.Module):
    """Padded waveforms ``(B, N)`` in [-1, 1] and lengths ``(B,)`` -> log-mel ``(B, T, n_mels)`` and lengths."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_fft = 1 << (cfg.win_length - 1).bit_length()
        window = torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float64).pow(0.85).float()
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("banks", mel_banks(cfg, self.n_fft), persistent=False)

    @torch.no_grad()
    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, warp: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        x = waveforms.float() * INT16_SCALE
        if x.shape[1] < cfg.win_length:
            x = nn.functional.pad(x, (0, cfg.win_length - x.shape[1]))
        frames = x.unfold(1, cfg.win_length, cfg.hop_length)  # (B, T, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        shifted = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - cfg.preemphasis * shifted) * self.window
        frames = nn.functional.pad(frames, (0, self.n_fft - cfg.win_length))
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)
        if warp is None:
            mel = power @ self.banks.T
        else:
            banks = torch.stack([mel_banks(cfg, self.n_fft, float(w)) for w in warp.tolist()]).to(power)
            mel = torch.einsum("btf,bmf->btm", power, banks)
        feats = mel.clamp(min=torch.finfo(mel.dtype).eps).log()
        feat_lengths = num_frames(lengths.to(feats.device), cfg)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lengths[:, None]
        return feats * valid[..., None], feat_lengths


def slaney_mel_banks(cfg: FeatureConfig) -> torch.Tensor:
    """``(n_fft // 2 + 1, n_mels)`` Slaney-scale, area-normalised filters: librosa's (and so ESPnet's) to 2e-9.

    torchaudio builds them in the default dtype; in float32 the smallest weights differ from librosa's float64
    ones by up to 0.2%, which moves quiet log-mel bins by 1e-4, so they are built in float64 here (at load time,
    before any decoding thread runs)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        banks = taf.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.low_freq, cfg.top_freq, cfg.n_mels, cfg.sample_rate,
                                    norm="slaney", mel_scale="slaney")
    finally:
        torch.set_default_dtype(previous)
    return banks.float()


class StftFeatures(nn.Module):
    """ESPnet's ``DefaultFrontend``: power spectrum of ``torch.stft`` (periodic window, reflect-padded centred
    frames), Slaney mel filters, ``log(max(mel, 1e-10))``; samples in [-1, 1], no pre-emphasis or dither.

    Each utterance is transformed on its own length, so its edge frames are what ESPnet computes for it alone
    (a padded batch would reflect the padding instead)."""

    LOG_FLOOR = 1e-10

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        window = getattr(torch, f"{cfg.window}_window")(cfg.win_length)
        banks = slaney_mel_banks(cfg)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("banks", banks, persistent=False)  # (n_fft // 2 + 1, n_mels)

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor,
                warp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if warp is not None:
            raise ValueError("frequency warping is a training augmentation of the kaldi filterbank")
        cfg = self.cfg
        feat_lengths = num_frames(lengths.to(waveforms.device), cfg)
        feats = waveforms.new_zeros(waveforms.shape[0], int(feat_lengths.max()), cfg.n_mels)
        for i, n in enumerate(lengths.tolist()):
            spec = torch.stft(waveforms[i, :n].float(), cfg.n_fft, cfg.hop_length, cfg.win_length, self.window,
                              center=cfg.center, return_complex=True)  # (F, T)
            power = spec.real.square() + spec.imag.square()
            feats[i, : power.shape[1]] = (power.T @ self.banks).clamp(min=self.LOG_FLOOR).log()
        return feats, feat_lengths


def make_features(cfg: FeatureConfig) -> nn.Module:
    """The filterbank `FeatureConfig.kind` names."""
    return StftFeatures(cfg) if cfg.kind == "stft" else FilterbankFeatures(cfg)


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation; the statistics come from the training set and live in the checkpoint."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("istd", torch.ones(n_mels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.istd.copy_(1.0 / std.clamp(min=1e-5))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]
        return (feats - self.mean) * self.istd * valid[..., None]


class UtteranceCMVN(nn.Module):
    """Each utterance's own mean subtracted over its frames (ESPnet's ``utterance_mvn``, means only)."""

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None])[..., None]
        mean = (feats * valid).sum(1, keepdim=True) / lengths.clamp(min=1)[:, None, None].to(feats.dtype)
        return (feats - mean) * valid


def make_normalizer(kind: str, mean: torch.Tensor, std: torch.Tensor) -> nn.Module:
    """The CMVN a checkpoint names (`model.config.NORMALIZATIONS`); ``mean``/``std`` are the global statistics."""
    if kind == "utterance":
        return UtteranceCMVN()
    cmvn = GlobalCMVN(mean.numel())
    cmvn.set_stats(mean, std)
    return cmvn
