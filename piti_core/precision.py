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
def cpu_flags() -> tuple[str, frozenset[str]]:
    """(CPU model name, instruction-set flags) from /proc/cpuinfo; empty where it cannot be read."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return name, flags


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX (bf16 matmuls in hardware)."""
    flags = cpu_flags()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(name: str | None) -> torch.device:
    """``None`` (cuda when available, else cpu) or a torch device string -> a usable ``torch.device``.

    A malformed name (``banana``) or an accelerator this machine lacks (``cuda`` without CUDA) is a
    :class:`~piti_core.errors.UsageError` naming what is available.
    """
    from piti_core.errors import UsageError

    if name is None or str(name).strip() == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name).strip())
    except (RuntimeError, ValueError):
        raise UsageError(f"device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {name!r}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise UsageError(f"device {name!r}: piti runs on cpu, cuda or mps devices")
    return device


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


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the weights and biases of ``model``'s convolutions and linear layers in ``dtype`` (bf16 or
    fp16), in place, for sampling under autocast of that dtype; returns ``model``. A no-op for fp32.

    Autocast casts an fp32 weight to the autocast dtype at every call outside its per-region cache, and
    a sampler opens one region per step: about one cast kernel per weight per step (docs/performance.md).
    Stored already cast, those kernels disappear and the outputs stay the same, bit for bit: autocast
    would have rounded the same weights the same way. Norms and every other parameter stay fp32 (the
    models compute norms in fp32). For models that only sample: training needs its fp32 weights.
    """
    if dtype == torch.float32:
        return model
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model


def autocast(device: torch.device | str, dtype: torch.dtype):
    """An autocast context for ``dtype`` (a no-op context for fp32)."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

