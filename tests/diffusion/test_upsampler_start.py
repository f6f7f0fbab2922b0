"""sample.upsampler_start: the upsampler starts from its noised low-res input instead of pure noise."""

import pytest
import torch
import torch.nn.functional as F

from piti_core.config import resolve_config
from piti_core.diffusion import build_schedule
from piti_core.errors import ConfigError
from piti_core.sampling import quantize, sample_upsampler, truncate_schedule


def test_truncated_schedule_keeps_the_steps_below_start_with_their_alphas():
    full = build_schedule("linear", 1000, "fast27")
    cut = truncate_schedule(full, "linear", 0.4)
    kept = [int(t) for t in full.timestep_map if t <= 0.4 * 999]
    assert [int(t) for t in cut.timestep_map] == kept and 0 < len(kept) < len(full.timestep_map)
    alphas = dict(zip(full.timestep_map.tolist(), full.alphas_cumprod.tolist()))
    torch.testing.assert_close(cut.alphas_cumprod, torch.tensor([alphas[t] for t in kept], dtype=torch.float64))


class _ExactModel:
    """Predicts ε exactly for x0 = the bilinearly upsampled low-res image; records the timesteps."""

    def __init__(self, schedule_name="linear"):
        self.calls = []
        self.schedule = build_schedule(schedule_name, 1000)

    def encode(self, cond):
        return (cond,)

    def decode_encoded(self, x, t, encoded, low):
        self.calls.append(float(t.flatten()[0]))
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        ab = self.schedule.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * up) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


@pytest.mark.parametrize("start", [1.0, 0.4])
def test_sampling_starts_at_the_given_level(start):
    cfg = resolve_config("tiny", [], [f"sample.upsampler_start={start}", "sample.upsampler_sampler=ddim",
                                        "sample.upsampler_steps=fast27"])
    model = _ExactModel()
    low = torch.rand(2, 3, 32, 32) * 2 - 1
    out = sample_upsampler(model, low, torch.zeros(2, 1, 64, 64), cfg, generator=torch.Generator().manual_seed(0))
    assert max(model.calls) <= start * 999
    n = len([t for t in build_schedule("linear", 1000, "fast27").timestep_map if t <= start * 999])
    assert len(model.calls) == n
    up = F.interpolate(quantize(low), size=64, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, up, atol=1e-3, rtol=0)


def test_start_must_be_in_zero_one():
    with pytest.raises(ConfigError, match="upsampler_start"):
        resolve_config("tiny", [], ["sample.upsampler_start=0"])


@pytest.mark.parametrize("preset", ["glide", "tiny"])
def test_default_start_is_the_measured_one(preset):
    # docs/performance.md, "Where the upsampler starts": from 0.4·T SDE-DPM-Solver++ "12" (5 steps) passed
    # the few-step test on both seeds; "--upsampler-start 1" is the official start
    s = resolve_config(preset).sample
    assert (s.upsampler_start, s.upsampler_sampler, s.upsampler_steps) == (0.4, "dpmpp-sde", "12")
    schedule = build_schedule("linear", 1000, s.upsampler_steps)
    assert len(truncate_schedule(schedule, "linear", s.upsampler_start).timestep_map) == 5
    assert resolve_config(preset, [], ["sample.upsampler_start=1"]).sample.upsampler_start == 1.0


def test_steps_run_counts_the_steps_each_stage_takes():
    from piti_core.sampling import steps_run

    cfg = resolve_config("tiny")  # "6" for the base; "12" from 0.4·T runs the 5 of its steps below 0.4·T
    assert steps_run(cfg) == {"base": 6, "upsampler": 5}
    official = resolve_config("tiny", [], ["sample.steps=250", "sample.upsampler_steps=fast27",
                                           "sample.upsampler_start=1"])
    assert steps_run(official) == {"base": 250, "upsampler": 27}
    assert steps_run(resolve_config("tiny", [], ["sample.steps=ddim25"]), upsampler=False) == {"base": 25}
