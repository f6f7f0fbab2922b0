"""Noise schedules and respacing against the reference spec (§3)."""

import math

import numpy as np
import pytest
import torch

from piti_core.diffusion.respace import build_schedule, respace, space_timesteps
from piti_core.diffusion.schedules import Schedule, cosine_betas, get_betas, linear_betas
from piti_core.errors import ConfigError

FAST27 = {0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311, 333, 355, 377, 399,
          400, 500, 599, 600, 799, 800, 997}


def test_cosine_matches_spec():
    b = cosine_betas(1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(4.1284e-5, rel=1e-3)
    assert b[-1] == 0.999
    assert np.all(np.diff(b) > 0)
    # the defining formula at an interior step
    ab = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert b[500] == pytest.approx(1 - ab(501 / 1000) / ab(500 / 1000), rel=1e-12)


def test_linear_endpoints_and_scaling():
    b = linear_betas(1000)
    assert b.dtype == np.float64
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b500 = linear_betas(500)
    assert b500[0] == pytest.approx(2e-4) and b500[-1] == pytest.approx(0.04)


def test_get_betas_unknown_name():
    with pytest.raises(ConfigError, match="cosine"):
        get_betas("sigmoid")


def test_fast27_exact():
    assert space_timesteps(1000, "fast27") == FAST27


def test_250_and_100_sets():
    s250 = space_timesteps(1000, "250")
    assert len(s250) == 250
    assert s250 == {round(i * 999 / 249) for i in range(250)}
    assert sorted(s250)[:4] == [0, 4, 8, 12] and sorted(s250)[-2:] == [995, 999]
    s100 = sorted(space_timesteps(1000, "100"))
    assert s100[:3] == [0, 10, 20] and s100[-2:] == [989, 999]


def test_section_counts_ddim_and_empty():
    assert space_timesteps(1000, "10,10,3,2,2") == (FAST27 - {997}) | {999}
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim1000") == set(range(1000))
    assert space_timesteps(1000, "") == set(range(1000))
    assert space_timesteps(1000, [5, 5]) == space_timesteps(1000, "5,5")


@pytest.mark.parametrize("spec", ["abc", "0", "2000", "ddimx", "ddim999", "10,-1", "600,600", "ddim2000"])
def test_bad_specs_raise_one_line(spec):
    with pytest.raises(ConfigError) as info:
        space_timesteps(1000, spec)
    assert "\n" not in str(info.value) and str(info.value)


def test_respace_keeps_alphas_cumprod():
    betas = cosine_betas(1000)
    ac = np.cumprod(1 - betas)
    for spec in ("250", "fast27", "ddim25", "10,10,3,2,2"):
        keep = sorted(space_timesteps(1000, spec))
        sched = respace(betas, keep)
        assert sched.num_timesteps == len(keep)
        assert sched.timestep_map.tolist() == keep
        assert sched.original_num_steps == 1000 and sched.is_respaced
        np.testing.assert_allclose(sched.alphas_cumprod.numpy(), ac[keep], rtol=1e-8)
        np.testing.assert_allclose(sched.betas.numpy(), 1 - ac[keep] / np.append(1.0, ac[keep][:-1]), rtol=1e-12)


def test_full_respace_equals_original_and_model_timesteps():
    full = build_schedule("linear", 1000)
    np.testing.assert_allclose(full.betas.numpy(), linear_betas(1000), rtol=1e-9)
    assert not full.is_respaced
    sched = build_schedule("cosine", 1000, "fast27")
    t = torch.arange(sched.num_timesteps)
    mt = sched.model_timesteps(t)
    assert mt.dtype == torch.float32 and mt.tolist() == sorted(FAST27)
    # T != 1000: timesteps are rescaled to the 0..1000 range the prior was trained on
    half = build_schedule("cosine", 500)
    assert half.model_timesteps(torch.tensor([0, 499])).tolist() == [0.0, 998.0]


def test_derived_arrays_match_formulas():
    s = build_schedule("cosine", 1000, "250")
    ac, b = s.alphas_cumprod.numpy(), s.betas.numpy()
    i = 37
    ac_prev = ac[i - 1]
    assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_next[-1] == 0.0
    assert s.posterior_variance[i].item() == pytest.approx(b[i] * (1 - ac_prev) / (1 - ac[i]), rel=1e-12)
    assert s.posterior_mean_coef1[i].item() == pytest.approx(b[i] * math.sqrt(ac_prev) / (1 - ac[i]), rel=1e-12)
    assert s.posterior_mean_coef2[i].item() == pytest.approx((1 - ac_prev) * math.sqrt(1 - b[i]) / (1 - ac[i]), rel=1e-12)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert s.sqrt_recipm1_alphas_cumprod[i].item() == pytest.approx(math.sqrt(1 / ac[i] - 1), rel=1e-12)
    assert all(v.dtype == torch.float64 for v in (s.betas, s.alphas_cumprod, s.posterior_variance))


def test_schedule_validation():
    with pytest.raises(ConfigError):
        Schedule(np.array([0.1, 1.5]))
    with pytest.raises(ConfigError):
        Schedule(np.array([]))
    one = respace(cosine_betas(1000), [999])  # a single step still has finite log-variances
    assert torch.isfinite(one.posterior_log_variance_clipped).all()
