"""Small random-initialised checkpoints for tests and benchmarks that must not depend on the shipped weights."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch

from .checkpoint import Checkpoint, save_checkpoint
from .config import FeatureConfig, ModelConfig
from .tokenizer import Tokenizer, train_tokenizer
from .transformer import SpeechTransformer


def character_tokenizer(directory: Path) -> Tokenizer:
    """A sentencepiece character model over a-z, apostrophe and space."""
    text = directory / "chars.txt"
    letters = string.ascii_lowercase + "'"
    text.write_text("\n".join(" ".join(letters[i:] + letters[:i]) for i in range(len(letters))) + "\n")
    return Tokenizer(train_tokenizer(text, directory / "chars", vocab_size=64, model_type="char"))


def make_random_checkpoint(directory: str | Path, seed: int = 0, **sizes: float) -> Path:
    """Save a tiny untrained model with a character tokenizer; ``sizes`` override ``ModelConfig`` fields."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = character_tokenizer(Path(tmp))
        torch.manual_seed(seed)
        dims = {"d_model": 64, "n_heads": 2, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 128, "dropout": 0.0,
                "conv_channels": 8} | sizes
        model = SpeechTransformer(ModelConfig(vocab_size=tok.vocab_size, **dims))
        feats = FeatureConfig()
        ckpt = Checkpoint(model, tok, feats, torch.full((feats.n_mels,), 8.0), torch.full((feats.n_mels,), 3.0),
                          {"note": "random initialisation, for tests"}, "random-test-model")
        return save_checkpoint(out, ckpt)
