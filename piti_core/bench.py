"""Throughput benchmark of the base and upsampler models (library part of ``piti bench``).

For each model: forward+backward images/s (training step without the optimizer), sampling model
evaluations/s (decoder under ``no_grad`` with the condition encoded once, as samplers do), peak memory,
FLOPs per image (``torch.utils.flop_counter`` on a meta-device copy, so counting costs no compute) and
the achieved FLOP rate as a fraction of a 2048×2048 matmul measured in the same run, dtype and device
(a smaller matmul where 2048² would take more than a few seconds, e.g. bf16 on CPUs without native
bf16; ``matmul_size`` says which). No printing: returns a dict.

Peak memory is the CUDA allocator's peak on GPUs; on CPUs it is the process's peak resident set size
during the phase (``/proc/self/status`` VmHWM after a reset), which includes the weights and memory
the allocator kept from earlier phases.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Optional

from piti_core.errors import UsageError
from piti_core.host_memory import keep_freed_memory

DTYPES = ("auto", "fp32", "bf16", "fp16")


# ------------------------------------------------------------------------------------ environment


def cpu_info() -> dict[str, Any]:
    """CPU model and whether it has native bf16 matmul support (AVX512-BF16 / AMX)."""
    from piti_core.precision import cpu_flags

    name, flags = cpu_flags()
    return {
        "cpu": name or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def _rss_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a code region: CUDA allocator peak, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset through ``/proc/self/clear_refs``; where that is not
    allowed the reported peak covers the whole process (``scope`` says which).
    """

    def __init__(self, device):
        self.device = device
        self.scope = "region"

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                self.scope = "process"
            self.start = _rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _rss_bytes("VmHWM")
        return False

    def as_dict(self) -> dict[str, Any]:
        kind = "cuda_allocated" if self.device.type == "cuda" else "rss"
        return {"peak_memory_bytes": self.peak, "memory_before_bytes": self.start, "memory_kind": kind,
                "memory_scope": self.scope}


# ------------------------------------------------------------------------------------ measurement


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, dtype: str):
    from piti_core.precision import DTYPES, autocast

    return autocast(device, DTYPES[dtype])


def matmul_rate(device, dtype: str, size: Optional[int] = None, min_time: float = 0.5,
                max_seconds: float = 5.0) -> tuple[float, int]:
    """Measured FLOP/s of a square matmul in ``dtype`` (2·n³ FLOPs each) and the size ``n`` used.

    ``size`` defaults to 2048 on the CPU and 8192 on CUDA (a GPU needs the larger product to reach its
    peak: the MFU of a GPU run is against the rate its tensor cores actually reach). ``n`` is ``size``
    unless a 512² probe predicts one ``size``² product to take longer than ``max_seconds`` (bf16 on
    CPUs without AVX512-BF16/AMX): then the largest power-of-two size that fits is used, down to 512.
    """
    import torch

    from piti_core.precision import DTYPES as TORCH_DTYPES

    tdtype = TORCH_DTYPES[dtype]
    if size is None:
        size = 8192 if torch.device(device).type == "cuda" else 2048

    def run(n: int, min_time: float) -> float:
        a = torch.randn(n, n, device=device, dtype=tdtype)
        b = torch.randn(n, n, device=device, dtype=tdtype)
        a @ b  # warm-up
        _sync(device)
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and count >= 2:
                return 2 * n**3 * count / elapsed

    probe = run(512, 0.0)
    n = size
    while n > 512 and 2 * n**3 / probe > max_seconds:
        n //= 2
    return (probe, 512) if n == 512 else (run(n, min_time), n)


def _sdpa_cpu_mapping() -> dict:
    """FLOP formulas for the CPU flash-attention kernels (not counted by torch's table)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
    if bwd is not None:
        mapping[bwd] = lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v)
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def model_flops(model, inputs: dict) -> tuple[int, int]:
    """FLOPs of (one training step, one sampling evaluation) of ``model`` on ``inputs``.

    Use a copy on the meta device: the count then costs no compute. The training step is forward,
    an MSE reduction and backward; the sampling evaluation is the decoder alone.
    """
    import torch

    def train_step():
        out = model(inputs["x_t"], inputs["timesteps"], inputs["cond"], inputs.get("low_res"))
        out.float().square().mean().backward()
        for p in model.parameters():
            p.grad = None

    model.train()
    train = count_flops(train_step)
    model.eval()
    with torch.no_grad():
        encoded = model.encode(inputs["cond"])
        evaluate = count_flops(lambda: model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded,
                                                            inputs.get("low_res")))
    return train, evaluate


def _dtype_name(name: str, device) -> str:
    """``auto|fp32|bf16|fp16`` -> the name of the dtype that runs on ``device`` (precision.resolve_dtype)."""
    import torch

    from piti_core.precision import resolve_dtype

    try:
        resolved = resolve_dtype(name, device)
    except Exception as exc:  # ConfigError: fp16 on the CPU
        raise UsageError(str(exc)) from None
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolved]


def _timed(fn: Callable[[], Any], steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def bench_model(model, inputs: dict, *, device, dtype: str, steps: int, warmup: int, peak_rate: float,
                flops: tuple[int, int], callback: Optional[Callable[[dict], None]] = None,
                name: str = "model") -> dict[str, Any]:
    """Training-step and sampling throughput of one :class:`PitiModel` on fixed ``inputs``.

    ``flops`` = (training step, sampling evaluation), e.g. from :func:`model_flops` on a meta copy.
    """
    import torch

    notify = callback or (lambda info: None)
    batch = inputs["x_t"].shape[0]
    train_flops, eval_flops = flops
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step():
        with _autocast(device, dtype):
            out = model(inputs["x_t"], inputs["timesteps"], inputs["cond"], inputs.get("low_res"))
            loss = out.float().square().mean()
        loss.backward()
        for p in params:
            p.grad = None

    model.train()
    notify({"model": name, "phase": "train"})
    with PeakMemory(device) as mem:
        train_s = _timed(train_step, steps, warmup, device)
    train = {"images_per_s": batch * steps / train_s, "step_s": train_s / steps,
             "flops_per_image": train_flops / batch, "flops_per_s": train_flops * steps / train_s}
    train["fraction_of_matmul"] = train["flops_per_s"] / peak_rate
    train.update(mem.as_dict())

    model.eval()
    notify({"model": name, "phase": "sample"})
    with torch.no_grad(), _autocast(device, dtype):
        encoded = model.encode(inputs["cond"])

        def evaluate():
            with torch.no_grad(), _autocast(device, dtype):
                model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, inputs.get("low_res"))

        with PeakMemory(device) as mem:
            eval_s = _timed(evaluate, steps, warmup, device)
    sample = {"evals_per_s": batch * steps / eval_s, "step_s": eval_s / steps,
              "flops_per_image": eval_flops / batch, "flops_per_s": eval_flops * steps / eval_s}
    sample["fraction_of_matmul"] = sample["flops_per_s"] / peak_rate
    sample.update(mem.as_dict())
    return {"params": sum(p.numel() for p in model.parameters()), "train": train, "sample": sample}


def _inputs(cfg, unet_cfg, batch_size: int, cond_channels: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    s, c = unet_cfg.image_size, cfg.encoder.cond_size
    out = {
        "x_t": torch.randn(batch_size, 3, s, s, generator=g),
        "timesteps": torch.randint(0, cfg.diffusion.steps, (batch_size,), generator=g).float(),
        "cond": torch.rand(batch_size, cond_channels, c, c, generator=g) * 2 - 1,
    }
    if unet_cfg.super_res:
        out["low_res"] = torch.rand(batch_size, 3, unet_cfg.super_res, unet_cfg.super_res, generator=g) * 2 - 1
    return {k: v.to(device) for k, v in out.items()}


def run_bench(cfg, *, models=("base", "upsampler"), device: str = "cpu", dtype: str = "fp32",
              batch_size: int = 1, steps: int = 3, warmup: int = 1, cond_channels: int = 3, seed: int = 0,
              callback: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Benchmark ``models`` of ``cfg`` (random weights). ``callback`` gets ``{"model", "phase"}`` dicts."""
    import torch

    from piti_core.models.build import build_base, build_upsampler

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'; use one of: {', '.join(DTYPES)}")
    requested = dtype
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if steps < 1 or batch_size < 1 or warmup < 0:
        raise UsageError("steps and batch size must be at least 1, warmup at least 0")
    dev = torch.device(device)
    dtype = _dtype_name(requested, dev)
    tuned_malloc = dev.type == "cpu" and keep_freed_memory()  # as piti train / sample run on the CPU
    notify = callback or (lambda info: None)
    notify({"model": "matmul", "phase": "calibrate"})
    rate, matmul_size = matmul_rate(dev, dtype)
    result: dict[str, Any] = {
        "preset": cfg.preset, "device": dev.type, "dtype": dtype, "dtype_requested": requested,
        "keep_freed_memory": tuned_malloc,
        "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "matmul_flops_per_s": rate, "matmul_size": matmul_size, "models": {},
    }
    result["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_info()["cpu"]
    if dev.type == "cpu":
        result["cpu"] = cpu_info()
    builders = {"base": (build_base, cfg.model), "upsampler": (build_upsampler, cfg.upsampler)}
    for name in models:
        if name not in builders:
            raise UsageError(f"unknown model '{name}'; use base and/or upsampler")
        build, unet_cfg = builders[name]
        notify({"model": name, "phase": "count flops"})
        meta_inputs = _inputs(cfg, unet_cfg, batch_size, cond_channels, torch.device("meta"), seed)
        with torch.device("meta"):
            meta_model = build(cfg, cond_channels)
        flops = model_flops(meta_model, meta_inputs)
        torch.manual_seed(seed)
        model = build(cfg, cond_channels).to(dev)
        inputs = _inputs(cfg, unet_cfg, batch_size, cond_channels, dev, seed)
        entry = bench_model(model, inputs, device=dev, dtype=dtype, steps=steps, warmup=warmup,
                            peak_rate=rate, flops=flops, callback=callback, name=name)
        entry["image_size"] = unet_cfg.image_size
        result["models"][name] = entry
        del model
    return result
