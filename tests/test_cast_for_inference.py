"""Weights stored in bf16 once for sampling: the same samples as autocast, without its per-step casts."""

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from piti_core.config import resolve_config
from piti_core.models.build import build_base, build_upsampler
from piti_core.precision import autocast, cast_for_inference
from piti_core.sampling import sample_base, sample_upsampler


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.casts += func.__name__.startswith("_to_copy")
        return func(*args, **(kwargs or {}))


def _cfg():
    return resolve_config(preset="tiny", overrides=["sample.sampler=ddim", "sample.steps=3", "sample.upsampler_sampler=ddim",
                                                    "sample.upsampler_steps=2", "sample.guidance_scale=2"])


def test_samples_are_bit_identical_to_autocast_and_casts_disappear():
    cfg = _cfg()
    torch.manual_seed(0)
    base = build_base(cfg, 3).eval()
    up = build_upsampler(cfg, 3).eval()
    cast_base, cast_up = cast_for_inference(copy.deepcopy(base), torch.bfloat16), \
        cast_for_inference(copy.deepcopy(up), torch.bfloat16)
    assert cast_base.decoder.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in cast_base.named_parameters() if "norm" in n)
    cond = torch.rand(2, 3, cfg.encoder.cond_size, cfg.encoder.cond_size) * 2 - 1
    null = torch.ones_like(cond)
    outs = []
    for b, u in ((base, up), (cast_base, cast_up)):
        g = torch.Generator().manual_seed(0)
        low = sample_base(b, cond, null, cfg, generator=g, dtype=torch.bfloat16)
        outs.append((low, sample_upsampler(u, low, cond, cfg, generator=g, dtype=torch.bfloat16)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])

    tokens = base.encode(cond)
    x, t = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size), torch.full((2,), 500.0)
    counts = []
    for model in (base, cast_base):
        with torch.no_grad(), autocast("cpu", torch.bfloat16), _Count() as count:
            model.decode_encoded(x, t, tokens)
        counts.append(count)
    weights = sum(1 for m in base.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                  for _ in m.parameters(recurse=False))
    assert counts[0].casts - counts[1].casts >= weights  # every conv / linear weight and bias, once per step
    assert counts[1].ops < counts[0].ops


def test_fp32_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert cast_for_inference(model, torch.float32)[0].weight.dtype == torch.float32
