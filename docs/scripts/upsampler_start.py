"""Upsampler reconstruction error vs the sampling start (docs/upsampler.md).

    python docs/scripts/upsampler_start.py RUN_DIR

Bicubic low-res of 8 validation images -> the run's upsampler (DDPM fast27) started at several
fractions of T from the noised upsampled low-res image; prints MSE and mean colour error vs the truth.
"""
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
from piti_core.plugins import get_plugin_manager
from piti_core.runs import load_run
from piti_core.sampling import quantize
from piti_core.train.degrade import degrade
from piti_core.diffusion import build_schedule, get_sampler
from piti_core.diffusion.respace import respace
from piti_core.diffusion.schedules import get_betas
host = get_plugin_manager()
run = load_run(sys.argv[1], names=["upsampler"], extra_sections=host.task_sections())
cfg = run.config; task = host.task("sketch")
ds = task.build_dataset(cfg, "val", image_sizes=(64,), train=False)
items = [ds[i] for i in range(8)]
hr = torch.stack([b["image"] for b in items]).float(); cond = torch.stack([b["cond"] for b in items])
low = quantize(degrade(hr, 32, "bicubic"))
m = run.models["upsampler"].eval()
with torch.no_grad():
    enc = m.encode(cond)
fn = lambda x, t: m.decode_encoded(x, t, enc, low).float()
full = build_schedule(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps, "fast27")
up = F.interpolate(low, size=64, mode="bilinear", align_corners=False)
print("bilinear baseline mse", float((up - hr).square().mean()))
for start in (1.0, 0.8, 0.6, 0.4, 0.25):
    keep = [int(t) for t in full.timestep_map if t <= start * 999]
    sch = respace(get_betas(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps), keep)
    ab = float(sch.alphas_cumprod[-1])
    g = torch.Generator().manual_seed(0)
    x = ab ** 0.5 * up + (1 - ab) ** 0.5 * torch.randn(hr.shape, generator=g) * 0.997
    with torch.no_grad():
        out = get_sampler("ddpm")(fn, x, sch, generator=g)
    print(start, len(keep), "steps; mse vs GT", round(float((out - hr).square().mean()), 4), "colour err", round(float((out.mean((2,3)) - hr.mean((2,3))).abs().mean()), 4))
