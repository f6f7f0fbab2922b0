"""Upsampler reconstruction error vs the sampling start (docs/upsampler.md).

    python docs/scripts/upsampler_start.py RUN_DIR

Bicubic low-res of 8 validation images -> the run's upsampler through piti's own sample_upsampler
(DDPM fast27) with sample.upsampler_start at several values; prints MSE and mean colour error vs the
ground truth, and bilinear upsampling as a baseline.
"""

import sys

import attrs
import torch
import torch.nn.functional as F

from piti_core.plugins import get_plugin_manager
from piti_core.runs import load_run
from piti_core.sampling import quantize, sample_upsampler
from piti_core.train.degrade import degrade


def main() -> None:
    torch.set_num_threads(1)
    host = get_plugin_manager()
    run = load_run(sys.argv[1], names=["upsampler"], extra_sections=host.task_sections())
    cfg = run.config
    task = host.task(run.meta["task"])
    ds = task.build_dataset(cfg, "val", image_sizes=(cfg.upsampler.image_size,), train=False)
    items = [ds[i] for i in range(8)]
    hr = torch.stack([b["image"] for b in items]).float()
    cond = torch.stack([b["cond"] for b in items])
    low = degrade(hr, cfg.upsampler.super_res, "bicubic")
    up = F.interpolate(quantize(low), size=hr.shape[-1], mode="bilinear", align_corners=False)
    print("bilinear baseline mse", round(float((up - hr).square().mean()), 4))
    for start in (1.0, 0.8, 0.6, 0.4, 0.25):
        c = attrs.evolve(cfg, sample=attrs.evolve(cfg.sample, upsampler_start=start, upsampler_sampler="ddpm",
                                                  upsampler_steps="fast27"))
        out = sample_upsampler(run.models["upsampler"], low, cond, c, generator=torch.Generator().manual_seed(0))
        colour = (out.mean((2, 3)) - hr.mean((2, 3))).abs().mean()
        print(start, "mse vs GT", round(float((out - hr).square().mean()), 4), "colour err", round(float(colour), 4))


if __name__ == "__main__":
    main()
