"""ESPnet2 Transformer ASR -> a checkpoint of ours: the same numbers through our own model code.

``speech-transformer import espnet SRC --out DIR``. ESPnet's Transformer ASR is the paper's architecture with a
joint CTC head, so it becomes settings of our one model (`model.config`), not a second model class: an STFT
log-mel front-end, its CMVN, ``conv2d``/``conv2d6``/``conv2d8`` subsampling, LayerNorm eps 1e-12, an untied output
layer with a bias, and its token list (``<blank>`` = 0, ``<unk>`` = 1, ``<sos/eos>`` last). Anything else ESPnet
can build (conformers, RNNs, SSL front-ends, other options) is refused with one line that names the config field,
never approximated. The ``.pth`` is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from model.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from model.config import SUBSAMPLINGS, FeatureConfig, ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import SpeechTransformer

from . import ImportFailure
from .espnet_files import EspnetFiles, locate, unpack

ESPNET_LAYER_NORM_EPS = 1e-12  # espnet.nets.pytorch_backend.transformer.layer_norm.LayerNorm
MVN_EPS = 1e-20  # espnet2.layers.global_mvn.GlobalMVN
MAX_TARGET_POSITIONS = 5000  # ESPnet's PositionalEncoding default length
WINDOWS = ("hann", "hamming", "blackman", "bartlett")

# Each supported option, with the values we can reproduce (None: any value; it acts only in training).
FRONTEND_OPTIONS: dict[str, tuple[Any, ...] | None] = {
    "fs": None, "n_fft": None, "win_length": None, "hop_length": None, "window": WINDOWS, "center": (True, False),
    "normalized": (False,), "onesided": (True,), "n_mels": None, "fmin": None, "fmax": None, "htk": (False,),
    "apply_stft": (True,), "frontend_conf": None,  # the speech-enhancement front-end: checked on its own
}
ENCODER_OPTIONS: dict[str, tuple[Any, ...] | None] = {
    "output_size": None, "attention_heads": None, "linear_units": None, "num_blocks": None, "dropout_rate": None,
    "positional_dropout_rate": None, "attention_dropout_rate": None, "input_layer": tuple(SUBSAMPLINGS),
    "normalize_before": (True,), "concat_after": (False,), "positionwise_layer_type": ("linear",),
    "positionwise_conv_kernel_size": None, "padding_idx": None, "interctc_layer_idx": (None, []),
    "interctc_use_conditioning": (False,), "layer_drop_rate": None, "qk_norm": (False,), "use_flash_attn": None,
    "selfattention_layer_type": ("selfattn",),
}
DECODER_OPTIONS: dict[str, tuple[Any, ...] | None] = {
    "attention_heads": None, "linear_units": None, "num_blocks": None, "dropout_rate": None,
    "positional_dropout_rate": None, "self_attention_dropout_rate": None, "src_attention_dropout_rate": None,
    "input_layer": ("embed",), "use_output_layer": (True,), "normalize_before": (True,), "concat_after": (False,),
    "layer_drop_rate": None, "qk_norm": (False,), "use_flash_attn": None,
}
# Top-level choices, with what we support; options not listed here (optimiser, batching, ...) concern training.
CHOICES: dict[str, tuple[Any, ...]] = {
    "frontend": ("default",), "normalize": ("global_mvn", "utterance_mvn", None), "encoder": ("transformer",),
    "decoder": ("transformer",), "token_type": ("bpe",), "preencoder": (None,), "postencoder": (None,),
    "model": ("espnet",),
}  # specaug is not checked: SpecAugment acts only in training


def _field(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else value


def _check_options(conf: dict[str, Any] | None, allowed: dict[str, tuple[Any, ...] | None], section: str) -> dict[str, Any]:
    conf = dict(conf or {})
    for key, value in conf.items():
        if key not in allowed:
            raise ImportFailure(f"{section}.{key}={_field(value)} is not supported")
        choices = allowed[key]
        if choices is not None and value not in choices:
            raise ImportFailure(f"{section}.{key}={_field(value)} is not supported (supported: "
                                f"{', '.join(_field(c) for c in choices)})")
    return conf


def _check_choices(cfg: dict[str, Any]) -> None:
    for key, choices in CHOICES.items():
        value = cfg.get(key, "espnet" if key == "model" else None)
        if value not in choices:
            raise ImportFailure(f"{key}={_field(value)} is not supported (supported: "
                                f"{', '.join(_field(c) for c in choices)})")


def _sample_rate(value: Any) -> int:
    """ESPnet writes ``fs`` as ``16000`` or ``16k``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k?)", str(value).strip().lower())
    if not match:
        raise ImportFailure(f"frontend_conf.fs={_field(value)} is not a sample rate")
    return int(float(match.group(1)) * (1000 if match.group(2) else 1))


def feature_config(cfg: dict[str, Any]) -> FeatureConfig:
    """``frontend: default`` with its ``frontend_conf`` (ESPnet's defaults where a key is absent)."""
    conf = _check_options(cfg.get("frontend_conf"), FRONTEND_OPTIONS, "frontend_conf")
    for key in ("use_wpe", "use_beamformer"):  # ESPnet's default enhancement front-end passes audio through
        if (conf.get("frontend_conf") or {}).get(key):
            raise ImportFailure(f"frontend_conf.frontend_conf.{key}=True is not supported")
    fs = _sample_rate(conf.get("fs", 16000))
    n_fft = int(conf.get("n_fft", 512))
    win = int(conf.get("win_length") or n_fft)
    hop = int(conf.get("hop_length", 128))
    if win > n_fft or hop <= 0:
        raise ImportFailure(f"frontend_conf: win_length={win} and hop_length={hop} do not fit n_fft={n_fft}")
    fmin = float(conf.get("fmin") or 0.0)
    fmax = float(conf.get("fmax") or fs / 2)
    return FeatureConfig(sample_rate=fs, n_mels=int(conf.get("n_mels", 80)), frame_length_ms=win * 1000 / fs,
                         frame_shift_ms=hop * 1000 / fs, preemphasis=0.0, low_freq=fmin, kind="stft", high_freq=fmax,
                         n_fft=n_fft, window=conf.get("window", "hann"), center=bool(conf.get("center", True)))


def model_config(cfg: dict[str, Any], n_mels: int) -> ModelConfig:
    enc = _check_options(cfg.get("encoder_conf"), ENCODER_OPTIONS, "encoder_conf")
    dec = _check_options(cfg.get("decoder_conf"), DECODER_OPTIONS, "decoder_conf")
    # Our one model shares heads and FFN width between encoder and decoder: ESPnet's defaults where absent.
    enc_heads, dec_heads = int(enc.get("attention_heads", 4)), int(dec.get("attention_heads", 4))
    enc_ff, dec_ff = int(enc.get("linear_units", 2048)), int(dec.get("linear_units", 2048))
    if enc_heads != dec_heads:
        raise ImportFailure(f"decoder_conf.attention_heads={dec_heads} differs from encoder_conf.attention_heads="
                            f"{enc_heads}, which this model does not support")
    if enc_ff != dec_ff:
        raise ImportFailure(f"decoder_conf.linear_units={dec_ff} differs from encoder_conf.linear_units={enc_ff}, "
                            "which this model does not support")
    ctc_weight = float((cfg.get("model_conf") or {}).get("ctc_weight", 0.5))
    if ctc_weight >= 1.0:
        raise ImportFailure(f"model_conf.ctc_weight={ctc_weight}: a CTC-only model has no attention decoder")
    tokens = token_list(cfg)
    d_model = int(enc.get("output_size", 256))
    try:
        return ModelConfig(
            vocab_size=len(tokens), d_model=d_model, n_heads=enc_heads, encoder_layers=int(enc.get("num_blocks", 6)),
            decoder_layers=int(dec.get("num_blocks", 6)), d_ff=enc_ff, dropout=float(enc.get("dropout_rate", 0.1)),
            conv_channels=d_model, n_mels=n_mels, max_target_positions=MAX_TARGET_POSITIONS, ctc=ctc_weight > 0,
            pad_id=tokens.index("<blank>"), unk_id=tokens.index("<unk>"), sos_id=len(tokens) - 1,
            eos_id=len(tokens) - 1, subsampling=enc.get("input_layer", "conv2d"),
            layer_norm_eps=ESPNET_LAYER_NORM_EPS, ffn_activation="relu", tied_output=False)
    except ValueError as e:
        raise ImportFailure(f"encoder_conf: {e}") from e


def token_list(cfg: dict[str, Any]) -> list[str]:
    tokens = cfg.get("token_list")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ImportFailure(f"token_list={_field(type(tokens).__name__)}: expected the list of tokens "
                            "(a path to a token file is not supported)")
    for name, where in (("<blank>", 0), ("<unk>", None), ("<sos/eos>", len(tokens) - 1)):
        if name not in tokens or (where is not None and tokens.index(name) != where):
            raise ImportFailure(f"token_list: {name} is {'missing' if name not in tokens else 'misplaced'} "
                                f"({'first' if where == 0 else 'last' if where else 'anywhere'} in an ESPnet list)")
    return tokens


def normalisation(cfg: dict[str, Any], stats_file: Path | None, n_mels: int) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(kind, mean, std) for `model.features.make_normalizer`."""
    kind = cfg.get("normalize")
    conf = dict(cfg.get("normalize_conf") or {})
    zeros, ones = torch.zeros(n_mels), torch.ones(n_mels)
    if kind is None:
        return "global", zeros, ones
    if kind == "utterance_mvn":
        _check_options(conf, {"norm_means": (True,), "norm_vars": (False,), "eps": None}, "normalize_conf")
        return "utterance", zeros, ones
    _check_options(conf, {"stats_file": None, "norm_means": (True, False), "norm_vars": (True, False), "eps": None},
                   "normalize_conf")
    assert stats_file is not None
    try:
        stats = np.load(stats_file, allow_pickle=False)
        if isinstance(stats, np.ndarray):  # the older layout: rows of sums and squares, the count last in row 0
            count, total, square = float(stats[0, -1]), stats[0, :-1].astype(np.float64), stats[1, :-1].astype(np.float64)
        else:
            with stats:
                count = float(np.asarray(stats["count"]).reshape(-1)[0])
                total, square = np.asarray(stats["sum"], np.float64), np.asarray(stats["sum_square"], np.float64)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ImportFailure(f"{stats_file}: not a feats_stats.npz with count, sum and sum_square ({e})") from e
    if total.shape != (n_mels,) or square.shape != (n_mels,) or count <= 0:
        raise ImportFailure(f"{stats_file}: statistics of shape {total.shape} over {count:g} frames do not fit "
                            f"n_mels={n_mels}")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean * mean, float(conf.get("eps", MVN_EPS))))
    mean_t = torch.from_numpy(mean).float() if conf.get("norm_means", True) else zeros
    std_t = torch.from_numpy(std).float() if conf.get("norm_vars", True) else ones
    return "global", mean_t, std_t


# ESPnet parameter names -> ours, as (regex at the start of the name, replacement).
RENAMES = (
    (r"encoder\.embed\.conv\.(\d+)\.", r"encoder.subsample.conv.\1."),
    (r"encoder\.embed\.out\.(0\.)?", "encoder.subsample.proj."),  # conv2d8's is a bare Linear
    (r"encoder\.encoders\.(\d+)\.self_attn\.linear_", r"encoder.blocks.\1.attn."),
    (r"encoder\.encoders\.(\d+)\.norm1\.", r"encoder.blocks.\1.attn_ln."),
    (r"encoder\.encoders\.(\d+)\.norm2\.", r"encoder.blocks.\1.ff_ln."),
    (r"(en|de)coder\.(en|de)coders\.(\d+)\.feed_forward\.w_1\.", r"\1coder.blocks.\3.ff.0."),
    (r"(en|de)coder\.(en|de)coders\.(\d+)\.feed_forward\.w_2\.", r"\1coder.blocks.\3.ff.3."),
    (r"encoder\.after_norm\.", "encoder.ln."),
    (r"decoder\.embed\.0\.", "decoder.embed."),
    (r"decoder\.decoders\.(\d+)\.self_attn\.linear_", r"decoder.blocks.\1.self_attn."),
    (r"decoder\.decoders\.(\d+)\.src_attn\.linear_", r"decoder.blocks.\1.cross_attn."),
    (r"decoder\.decoders\.(\d+)\.norm1\.", r"decoder.blocks.\1.self_ln."),
    (r"decoder\.decoders\.(\d+)\.norm2\.", r"decoder.blocks.\1.cross_ln."),
    (r"decoder\.decoders\.(\d+)\.norm3\.", r"decoder.blocks.\1.ff_ln."),
    (r"decoder\.after_norm\.", "decoder.ln."),
    (r"decoder\.output_layer\.", "decoder.out."),
    (r"ctc\.ctc_lo\.", "ctc_head."),
)


def _our_name(key: str) -> str | None:
    """Our parameter name for an ESPnet one (None: ESPnet's buffers that we keep elsewhere or recompute)."""
    if key.startswith(("normalize.", "frontend.")):
        return None  # the CMVN statistics come from feats_stats.npz; the mel basis is recomputed
    for pattern, replacement in RENAMES:
        renamed, hits = re.subn(f"^{pattern}", replacement, key)
        if hits:
            return renamed
    return key  # unknown: reported as not described by the config


def load_state(model_file: Path) -> dict[str, torch.Tensor]:
    """The ``.pth``'s tensors, unpickled only by torch's safe loader (plain tensors and containers)."""
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises several kinds; all mean "not a state dict we read"
        raise ImportFailure(f"{model_file}: not a PyTorch state dict readable with weights_only=True "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trainer's checkpoint.pth: the model's state beside the optimiser's
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImportFailure(f"{model_file}: not a state dict (a mapping of names to tensors)")
    return state


def convert_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, model_file: Path) -> SpeechTransformer:
    """Our model with ESPnet's tensors; every tensor the config implies must be there, with its shape."""
    model = SpeechTransformer(cfg)
    ours = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = _our_name(key)
        if name is None:
            continue
        if name not in ours:
            raise ImportFailure(f"{model_file}: {key} {tuple(tensor.shape)} is not part of the model the config "
                                "describes")
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ImportFailure(f"{model_file}: {key} has shape {tuple(tensor.shape)}, the config implies "
                                f"{tuple(ours[name].shape)}")
        renamed[name] = tensor.float()
    # ESPnet's positional encoding has no learned scale: ours starts at 1 and stays there.
    for name in ("encoder.pos.alpha", "decoder.pos.alpha"):
        renamed[name] = torch.ones(1)
    missing = sorted(set(ours) - set(renamed))
    if missing:
        raise ImportFailure(f"{model_file}: lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                                  else "") + ", which the config implies")
    model.load_state_dict(renamed, strict=True)
    return model.eval()


def espnet_version(root: Path, cfg: dict[str, Any]) -> str:
    """The version the zoo's ``meta.yaml`` records (or the config's own ``version``)."""
    meta = root / "meta.yaml"
    if meta.is_file():
        try:
            recorded = (yaml.safe_load(meta.read_text()) or {}).get("espnet")
        except yaml.YAMLError:
            recorded = None
        if recorded:
            return str(recorded)
    return str(cfg.get("version", "unknown"))


def convert(files: EspnetFiles, source: Path) -> Checkpoint:
    cfg = files.config
    _check_choices(cfg)
    features = feature_config(cfg)
    model_cfg = model_config(cfg, features.n_mels)
    kind, mean, std = normalisation(cfg, files.stats_file, features.n_mels)
    tokens = token_list(cfg)
    try:
        tokenizer = Tokenizer(files.bpemodel, tokens)
    except (RuntimeError, OSError, ValueError) as e:
        raise ImportFailure(f"{files.bpemodel}: not a sentencepiece model ({str(e).splitlines()[0]})") from e
    unknown = [t for i, t in enumerate(tokens)
               if tokenizer.is_text(i) and tokenizer.sp.piece_to_id(t) == tokenizer.sp.unk_id()]
    if unknown:
        raise ImportFailure(f"{files.bpemodel}: token_list entry {unknown[0]!r} is not one of its pieces "
                            f"({len(unknown)} such entries): the bpemodel does not belong to this config")
    model = convert_weights(load_state(files.model_file), model_cfg, files.model_file)
    provenance = {
        "imported_from": "espnet2",
        "source": str(source),
        "config": str(files.config_file.relative_to(files.root)) if files.config_file.is_relative_to(files.root)
        else str(files.config_file),
        "model_file": files.model_file.name,
        "model_file_sha256": file_sha256(files.model_file),
        "espnet_version": espnet_version(files.root, cfg),
        "ctc_weight_trained": (cfg.get("model_conf") or {}).get("ctc_weight"),
    }
    name = files.config_file.parent.name
    return Checkpoint(model, tokenizer, features, mean, std, provenance, name, None, kind)


def import_espnet(src: Path, out: Path, *, config: Path | None = None, model_file: Path | None = None,
                  stats: Path | None = None, bpemodel: Path | None = None, force: bool = False) -> Path:
    """Write the checkpoint to a temporary directory beside ``out`` and rename it there at the end, so a failure
    leaves nothing in ``out``."""
    if out.exists() and not force:
        raise ImportFailure(f"--out {out} already exists (add --force to replace it)")
    if not src.exists():
        raise ImportFailure(f"{src}: no such file or directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        root = src
        if src.is_file():
            root = unpack(src, Path(tmp) / "source")
        elif not src.is_dir():
            raise ImportFailure(f"{src}: neither a directory nor a zip archive")
        ckpt = convert(locate(root, config, model_file, stats, bpemodel), src)
        staged = save_checkpoint(Path(tmp) / "checkpoint", ckpt)
        load_checkpoint(staged)  # what serving will do: it must load
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staged.rename(out)
    return out
