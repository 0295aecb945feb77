"""Where the model runs and in what precision: one choice that serving, training and the benchmarks share.

Serving defaults to float16 on CUDA and float32 on the CPU; training and the benchmarks' reduced-precision runs use
bfloat16 where the hardware has it (CUDA, or a CPU with AVX512-BF16/AMX: emulated bf16 is ~10-15x slower there).
Reduced precision is always autocast over float32 weights, never a cast of the weights, except ``int8``: the
Linear layers' weights quantized once at load by torch's dynamic quantization (CPU only), the rest in float32.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8 = "int8"  # not an autocast dtype: computes in float32 around int8 Linear layers (`quantize_int8`)


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else is taken as a torch device name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The inference precision by name; ``"auto"``: float16 on CUDA, float32 on the CPU."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == INT8:
        if device.type != "cpu":
            raise ValueError("int8 is the CPU's dynamic quantization; use float16 on CUDA")
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}, 'int8' or 'auto'")
    if device.type == "cpu" and dtype == "float16":
        raise ValueError("float16 is CUDA-only; use bfloat16 on the CPU")
    return DTYPES[dtype]


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 runs at hardware speed here (CUDA, or a CPU with AVX512-BF16/AMX)."""
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where it is native, else float32 (emulated bf16 costs more than it saves)."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers hold int8 weights and quantize their inputs per call."""
    with warnings.catch_warnings():  # torch marks its quantized tensor types for a future removal
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
