"""Cascaded sampling: the base model at its size, then the upsampler, from encoded conditions.

The task encoder runs once per image (not once per step); guidance is one batched pass over
``[cond; null]``; the upsampler runs without guidance, as officially, with its initial noise scaled
by ``upsampler_temperature`` (0.997) and its low-res input quantised to 8 bits by truncation.
"""

from __future__ import annotations

from typing import Callable

import torch

from piti_core.diffusion import build_schedule, guided

Callback = Callable[[dict], None]
Sampler = Callable[..., torch.Tensor]


def resolve_sampler(sampler: "str | Sampler", key: str = "sample.sampler") -> Sampler:
    """A sampler function: ``sampler`` itself when it is one, else the sampler of that name from the plugin
    host (the built-in ones included); an unknown name is a ConfigError naming ``key``."""
    if callable(sampler):
        return sampler
    from piti_core.plugins import get_plugin_manager

    return get_plugin_manager().sampler(sampler, key)


@torch.no_grad()
def sample_base(model, cond: torch.Tensor, null: torch.Tensor, cfg, *, sampler: str | Sampler | None = None,
                steps: str | None = None, guidance: str | None = None, scale: float | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images (B, 3, S, S) in [-1, 1] from the base model for conditions ``cond``."""
    from piti_core.precision import autocast

    s = cfg.sample
    schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps, steps or s.steps)
    dev = cond.device
    kind = guidance or s.guidance
    scale = s.guidance_scale if scale is None else scale
    with autocast(dev, dtype):
        tokens = model.encode(cond)  # once per image, not once per step
        needs_null = kind != "none" and scale != 1
        null_tokens = model.encode(null[:1]) if needs_null else tokens

    def fn(x, t, c):
        with autocast(dev, dtype):
            return model.decode_encoded(x, t, c).float()

    model_fn = guided(fn, tokens, null_tokens, scale, kind=kind, interval=s.guidance_interval)
    size = model.decoder.image_size if hasattr(model.decoder, "image_size") else cfg.model.image_size
    x = torch.randn((cond.shape[0], 3, size, size), generator=generator, device=dev)
    fn = resolve_sampler(sampler or s.sampler)
    return fn(model_fn, x, schedule, generator=generator, callback=callback)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """The official low-res hand-off: clamp, 8-bit levels by truncation, back to [-1, 1]."""
    return (127.5 * (x.clamp(-1, 1) + 1)).to(torch.int32).float() / 127.5 - 1


@torch.no_grad()
def sample_upsampler(model, low_res: torch.Tensor, cond: torch.Tensor, cfg, *, sampler: str | Sampler | None = None,
                     steps: str | None = None, generator: torch.Generator | None = None,
                     callback: Callback | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Upsample ``low_res`` (B, 3, s, s) to the upsampler's size, conditioned on ``cond``."""
    from piti_core.precision import autocast

    s = cfg.sample
    schedule = build_schedule(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps, steps or s.upsampler_steps)
    start = s.upsampler_start
    if start < 1.0:
        schedule = truncate_schedule(schedule, cfg.diffusion.upsampler_schedule, start)
    dev = cond.device
    low = quantize(low_res)
    with autocast(dev, dtype):
        encoded = model.encode(cond)

    def model_fn(x, t):
        with autocast(dev, dtype):
            return model.decode_encoded(x, t, encoded, low).float()

    size = cfg.upsampler.image_size
    x = torch.randn((cond.shape[0], 3, size, size), generator=generator, device=dev) * s.upsampler_temperature
    if start < 1.0:  # q(x_t | x_0 = the upsampled low-res image) at the schedule's first (largest) step
        import torch.nn.functional as F

        ab = float(schedule.alphas_cumprod[-1])
        up = F.interpolate(low.float(), size=(size, size), mode="bilinear", align_corners=False)
        x = ab ** 0.5 * up + (1.0 - ab) ** 0.5 * x
    fn = resolve_sampler(sampler or s.upsampler_sampler, "sample.upsampler_sampler")
    return fn(model_fn, x, schedule, generator=generator, callback=callback)


def steps_run(cfg, *, upsampler: bool = True) -> dict[str, int]:
    """How many model steps each stage takes with ``cfg.sample``: the base's respacing, and the
    upsampler's respacing less its steps above ``upsampler_start``·T (``"12"`` from 0.4·T runs 5)."""
    s = cfg.sample
    counts = {"base": len(build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps, s.steps).timestep_map)}
    if upsampler:
        schedule = build_schedule(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps, s.upsampler_steps)
        if s.upsampler_start < 1.0:
            schedule = truncate_schedule(schedule, cfg.diffusion.upsampler_schedule, s.upsampler_start)
        counts["upsampler"] = len(schedule.timestep_map)
    return counts


def truncate_schedule(schedule, name: str, start: float):
    """``schedule`` without its steps above ``start``·T (the first step kept is the largest below it)."""
    from piti_core.diffusion.respace import respace
    from piti_core.diffusion.schedules import get_betas

    total = int(schedule.original_num_steps or len(schedule.timestep_map))
    keep = [int(t) for t in schedule.timestep_map if t <= start * (total - 1)]
    if not keep:
        keep = [int(schedule.timestep_map[0])]
    return respace(get_betas(name, total), keep)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (B, H, W, 3) with rounding."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def save_grid(path, rows: list[list[torch.Tensor]], pad: int = 2) -> None:
    """Write rows of (3, H, W) images in [0, 1] (any sizes; resized to the first's height) as a PNG."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from piti_core.io import atomic_write

    h = rows[0][0].shape[-1]
    cols = max(len(r) for r in rows)
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, cols * (h + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = img.float().clamp(0, 1)
            if img.shape[-1] != h:
                img = F.interpolate(img[None], size=(h, h), mode="nearest")[0]
            y, x = pad + i * (h + pad), pad + j * (h + pad)
            canvas[:, y:y + h, x:x + h] = img
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
