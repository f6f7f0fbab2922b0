"""Uniform and loss-second-moment timestep samplers."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from piti_core.diffusion.resample import LossSecondMomentSampler, UniformSampler, get_timestep_sampler
from piti_core.errors import CheckpointError, ConfigError

T = 20


def _warm(sampler, hot=None, rounds=10):
    for _ in range(rounds):
        losses = torch.ones(T)
        if hot is not None:
            losses[hot] = 10.0
        sampler.update(torch.arange(T), losses)


def test_uniform_sampler_deterministic():
    s = UniformSampler(T)
    t1, w1 = s.sample(64, generator=torch.Generator().manual_seed(0))
    t2, w2 = s.sample(64, generator=torch.Generator().manual_seed(0))
    t3, _ = s.sample(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    assert t1.dtype == torch.int64 and t1.min() >= 0 and t1.max() < T
    assert w1.dtype == torch.float32 and torch.all(w1 == 1)
    assert s.state_dict() == {}


def test_uniform_until_every_t_has_ten_losses():
    s = LossSecondMomentSampler(T)
    _warm(s, hot=3, rounds=9)
    s.update(torch.arange(T - 1), torch.ones(T - 1))  # all but the last t now have 10
    assert not s.warmed_up
    assert torch.all(s.weights() == 1)
    _, w = s.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.all(w == 1)
    s.update(torch.tensor([T - 1]), torch.tensor([1.0]))
    assert s.warmed_up


def test_favours_high_loss_and_importance_weights():
    s = LossSecondMomentSampler(T)
    _warm(s, hot=3)
    w = s.weights()
    rms = torch.ones(T, dtype=torch.float64)
    rms[3] = 10.0
    expected = rms / rms.sum() * (1 - 0.001) + 0.001 / T
    torch.testing.assert_close(w, expected)
    assert w.sum().item() == pytest.approx(1.0)
    t, iw = s.sample(4000, generator=torch.Generator().manual_seed(0))
    frac3 = (t == 3).float().mean().item()
    assert frac3 == pytest.approx(10 / 29, abs=0.03)  # vs 1/20 uniform
    torch.testing.assert_close(iw, (1.0 / (T * expected[t])).float())
    # E_p[w·L] == mean_t L (unbiased)
    assert (expected * (1 / (T * expected))).sum().item() == pytest.approx(1.0)


def test_history_keeps_last_ten():
    s = LossSecondMomentSampler(T)
    for k in range(12):
        s.update(torch.tensor([5]), torch.tensor([float(k)]))
    hist = s.state_dict()["history"][5]
    assert hist.tolist() == [float(k) for k in range(2, 12)]
    assert s.state_dict()["counts"][5].item() == 10


def test_state_round_trip_is_exact(tmp_path):
    a = LossSecondMomentSampler(T)
    _warm(a, hot=7)
    a.update(torch.tensor([7, 7, 2]), torch.tensor([30.0, 0.5, 2.0]))
    save_file(a.state_dict(), str(tmp_path / "sampler.safetensors"))
    b = LossSecondMomentSampler(T)
    b.load_state_dict(load_file(str(tmp_path / "sampler.safetensors")))
    for seed in range(3):
        ta, wa = a.sample(32, generator=torch.Generator().manual_seed(seed))
        tb, wb = b.sample(32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ta, tb) and torch.equal(wa, wb)
        a.update(ta, ta.float())
        b.update(tb, tb.float())
    torch.testing.assert_close(a.weights(), b.weights(), rtol=0, atol=0)
    state = a.state_dict()
    state["history"].zero_()  # a copy, not the live buffer
    assert torch.equal(a.state_dict()["history"], b.state_dict()["history"])
    with pytest.raises(CheckpointError, match="diffusion.steps"):
        LossSecondMomentSampler(T + 1).load_state_dict(b.state_dict())


def test_get_timestep_sampler():
    assert isinstance(get_timestep_sampler("loss-second-moment", T), LossSecondMomentSampler)
    assert type(get_timestep_sampler("uniform", T)) is UniformSampler
    with pytest.raises(ConfigError, match="loss-second-moment"):
        get_timestep_sampler("importance", T)
