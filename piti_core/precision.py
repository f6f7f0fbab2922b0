"""Mixed precision: pick a dtype for a device and give the matching autocast context.

``auto`` means bf16 where the hardware runs it natively (CUDA GPUs with bf16 support; CPUs with
AVX512-BF16 or AMX), fp16 with a grad scaler on older CUDA GPUs, and fp32 everywhere else. Norms,
softmax and the loss stay in fp32 inside the models.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from piti_core.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``auto|fp32|bf16|fp16`` -> the compute dtype to use on ``device``."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; valid: auto, {', '.join(DTYPES)}")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 autocast is for CUDA; use --dtype bf16 or fp32 on the CPU")
    return DTYPES[name]


def autocast(device: torch.device | str, dtype: torch.dtype):
    """An autocast context for ``dtype`` (a no-op context for fp32)."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
