"""A training config (``recipe/configs/*.json``) read into typed dataclasses, checked before any work starts.

The JSON has three sections, mirrored one to one: ``model`` (`ModelConfig` fields), ``tokenizer`` and ``train``.
A misspelt or unknown key is refused with one line that names it, rather than silently ignored for hours of
training; a missing required key is refused the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import ModelConfig

from .augment import AugmentConfig


class ConfigError(ValueError):
    """The training config cannot be used as written."""


@dataclass(frozen=True)
class TokenizerSettings:
    type: str  # sentencepiece model type: unigram, bpe or char
    vocab_size: int


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section: optimiser, schedule, batching, SpecAugment, evaluation, snapshots, augmentation."""

    peak_lr: float
    warmup_steps: int
    weight_decay: float
    max_batch_frames: int  # padded frames per batch
    label_smoothing: float
    ctc_weight: float  # w in (1 - w) * attention + w * CTC
    grad_clip: float
    epochs: int
    spec_freq_masks: int
    spec_freq_width: int
    spec_time_masks: int
    spec_time_width: int
    eval_every: int  # steps between dev evaluations
    snapshot_every: int  # steps between weight snapshots (and resumable state)
    average_last: int  # snapshots averaged into the export
    feature_copies: int  # augmented copies of each training utterance
    seed: int
    eval_each_epoch: bool = True
    cooldown_from: int | None = None  # linear cool-down of the learning rate to zero between these steps
    cooldown_to: int | None = None
    silence_pad_s: float = 0.0
    augment: dict[str, Any] = field(default_factory=dict)  # `AugmentConfig` fields overridden by name

    def augmentation(self) -> AugmentConfig:
        """The waveform augmentation asked for: defaults, ``silence_pad_s``, then the ``augment`` overrides."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}
        known = [f.name for f in dataclasses.fields(AugmentConfig)]
        unknown = overrides.keys() - set(known)
        if unknown:
            raise ConfigError(f"unknown augment setting(s) {sorted(unknown)}; known: {known}")
        return dataclasses.replace(AugmentConfig(pad_s=float(self.silence_pad_s)), **overrides)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig  # its vocab_size is the tokenizer section's until the trained tokenizer's replaces it
    tokenizer: TokenizerSettings
    train: TrainSettings
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the JSON, for provenance

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        _check_keys("config", data, {"model", "tokenizer", "train"}, {"model", "tokenizer", "train"})
        model_keys = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
        _check_keys("model", data["model"], model_keys, set())
        tokenizer = _build(TokenizerSettings, "tokenizer", data["tokenizer"])
        train = _build(TrainSettings, "train", data["train"])
        train.augmentation()  # refuse unknown augmentation names now, not after the features
        try:
            model = ModelConfig(vocab_size=tokenizer.vocab_size, **data["model"])
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e
        return cls(model, tokenizer, train, data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a JSON config; every problem is a `ConfigError` whose one-line message starts with the path."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ConfigError) as e:
            raise ConfigError(f"{path}: {e}") from e

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The network to build once the tokenizer, and so the real vocabulary size, is known."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)


def _build(cls: type, name: str, data: Any) -> Any:
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    _check_keys(name, data, {f.name for f in fields}, required)
    return cls(**data)


def _check_keys(name: str, data: Any, known: set[str], required: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a JSON object, got {type(data).__name__}")
    unknown, missing = sorted(data.keys() - known), sorted(required - data.keys())
    if unknown:
        raise ConfigError(f"unknown {name} setting(s) {unknown}; known: {sorted(known)}")
    if missing:
        raise ConfigError(f"missing {name} setting(s) {missing}")
