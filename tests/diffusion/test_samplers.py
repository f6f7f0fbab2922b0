"""Sampler contract tests shared by every registered sampler, plus per-sampler maths."""

import math

import pytest
import torch

from piti_core.diffusion.respace import build_schedule, respace
from piti_core.diffusion.samplers import SAMPLERS, get_sampler, sample_ddim, sample_ddpm, sample_dpmpp_2m
from piti_core.diffusion.samplers import sample_dpmpp_2m_sde
from piti_core.diffusion.schedules import cosine_betas
from piti_core.errors import ConfigError

SHAPE = (2, 3, 8, 8)


@pytest.fixture(scope="module")
def sched10():
    return build_schedule("cosine", 1000, "10")


def _run(name, model, schedule, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    return SAMPLERS[name](model, x, schedule, generator=g, **kw)


@pytest.mark.parametrize("learned", [True, False], ids=["eps+v", "eps"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name, learned, sched10, gaussian_model):
    model = gaussian_model(mu=0.2, s=0.3, learned=learned, v=0.3)
    a = _run(name, model, sched10, seed=0)
    b = _run(name, model, sched10, seed=0)
    c = _run(name, model, sched10, seed=1)
    assert a.shape == SHAPE and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_and_original_timesteps(name, gaussian_model):
    sched = build_schedule("linear", 1000, "fast27")
    seen_t, infos = [], []
    base = gaussian_model(mu=0.0, s=0.5)

    def model(x, t):
        assert t.dtype == torch.float32 and t.shape == (x.shape[0],)
        seen_t.append(t[0].item())
        return base(x, t)

    out = _run(name, model, sched, seed=0, callback=infos.append)
    expected = sorted(sched.timestep_map.tolist(), reverse=True)
    assert seen_t == [float(v) for v in expected]
    assert [i["i"] for i in infos] == list(range(27)) and all(i["total"] == 27 for i in infos)
    assert [i["t"] for i in infos] == expected
    assert torch.equal(infos[-1]["x"], out) and infos[-1]["x0"].shape == SHAPE


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_point_mass_oracle_is_recovered(name, sched10, gaussian_model):
    target = torch.tensor([0.5, -0.25, 0.8]).reshape(1, 3, 1, 1)
    model = gaussian_model(mu=target, s=0.0)
    out = _run(name, model, sched10, seed=3)
    torch.testing.assert_close(out, target.expand(SHAPE), atol=1e-4, rtol=0)


def test_one_ddpm_step_is_the_posterior_formula(gaussian_model):
    # a custom respacing whose first step is at moderate noise (float32 is exact enough there)
    sched = respace(cosine_betas(1000), range(0, 600, 100))
    v = 0.4
    model = gaussian_model(mu=0.1, s=0.6, v=v)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    steps = []
    sample_ddpm(model, x.clone(), sched, generator=torch.Generator().manual_seed(11), callback=steps.append)
    # independent computation of the first step (respaced index 5 = original t 500)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = lambda t: f(t / 1000) / f(0.0)  # noqa: E731
    ac, ac_prev = ab(501), ab(401)  # ᾱ after steps 0..500 and 0..400 of the cosine process
    beta = 1 - ac / ac_prev
    beta_tilde = beta * (1 - ac_prev) / (1 - ac)
    eps = model(x, torch.full((2,), 500.0))[:, :3].double()
    x64 = x.double()
    x0 = ((x64 - math.sqrt(1 - ac) * eps) / math.sqrt(ac)).clamp(-1, 1)
    mean = math.sqrt(ac_prev) * beta / (1 - ac) * x0 + math.sqrt(1 - beta) * (1 - ac_prev) / (1 - ac) * x64
    frac = (v + 1) / 2
    log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
    expected = mean + math.exp(0.5 * log_var) * z.double()
    assert steps[0]["t"] == 500
    torch.testing.assert_close(steps[0]["x"].double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps[0]["x0"].double(), x0, atol=1e-5, rtol=1e-5)


def test_ddim_eta0_is_deterministic(sched10, gaussian_model):
    model = gaussian_model(mu=0.2, s=0.3)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a = sample_ddim(model, x, sched10)
    b = sample_ddim(model, x, sched10, generator=torch.Generator().manual_seed(1))
    c = sample_ddim(model, x, sched10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(b, c)
    d = sample_ddim(model, x, sched10, eta=1.0, generator=torch.Generator().manual_seed(1))
    e = sample_ddim(model, x, sched10, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(d, e)


def _ode_error(sampler, steps, gaussian_model):
    """Max error against the exact probability-flow ODE solution for N(mu, s²) data."""
    mu, s = 0.1, 0.4
    sched = build_schedule("cosine", 1000, str(steps))
    x = torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T = sched.alphas_cumprod[-1].item()
    exact = mu + s * (x - math.sqrt(a_T) * mu) / math.sqrt(a_T * s**2 + 1 - a_T)
    out = sampler(gaussian_model(mu=mu, s=s), x, sched, clip_denoised=False)
    return (out - exact).abs().max().item()


def test_dpmpp_is_second_order(gaussian_model):
    dpm50, dpm100 = (_ode_error(sample_dpmpp_2m, n, gaussian_model) for n in (50, 100))
    ddim50, ddim100 = (_ode_error(sample_ddim, n, gaussian_model) for n in (50, 100))
    assert dpm50 / dpm100 > 3.2  # halving the step cuts the error ~4x (second order)
    assert ddim50 / ddim100 < 2.5  # DDIM is first order
    assert dpm100 < 0.5 * ddim100


def test_dpmpp_few_steps_beats_ddim(gaussian_model):
    assert _ode_error(sample_dpmpp_2m, 10, gaussian_model) < 0.7 * _ode_error(sample_ddim, 10, gaussian_model)


@pytest.mark.parametrize("name,kw,steps", [("ddpm", {}, "50"), ("ddim", {}, "50"), ("dpmpp", {}, "50"),
                                           ("dpmpp-sde", {}, "50"), ("dpmpp-sde", {}, "20")])
def test_samples_match_data_distribution(name, kw, steps, gaussian_model):
    mu, s = 0.1, 0.3
    sched = build_schedule("cosine", 1000, steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1, 2, 2, generator=g)
    out = SAMPLERS[name](gaussian_model(mu=mu, s=s, v=0.0), x, sched, generator=g, clip_denoised=False, **kw)
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s, rel=0.06)


def test_ddim_eta1_is_ddpm_with_posterior_variance(sched10, gaussian_model):
    # DDIM's sigma at eta=1 is exactly sqrt(beta_tilde): the same chain as DDPM with v = -1
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample_ddim(gaussian_model(mu=0.1, s=0.3), x, sched10, eta=1.0, generator=torch.Generator().manual_seed(4))
    b = sample_ddpm(gaussian_model(mu=0.1, s=0.3, v=-1.0), x, sched10, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("steps", ["10", "30"])
def test_dpmpp_sde_at_eta0_is_the_ode_solver(steps, gaussian_model):
    sched = build_schedule("cosine", 1000, steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = gaussian_model(mu=0.1, s=0.3)
    ode_steps, sde_steps = [], []
    ode = sample_dpmpp_2m(model, x, sched, callback=ode_steps.append)
    sde0 = sample_dpmpp_2m_sde(model, x, sched, eta=0.0, generator=torch.Generator().manual_seed(1),
                               callback=sde_steps.append)
    # the same steps; the SDE solver always takes the step into index 0 at first order, the ODE solver
    # only in runs of fewer than 15 steps
    same = ode_steps if int(steps) < 15 else ode_steps[:-2]
    for a, b in zip(same, sde_steps):
        torch.testing.assert_close(b["x"], a["x"], atol=1e-10, rtol=1e-10)
    if int(steps) < 15:
        torch.testing.assert_close(sde0, ode, atol=1e-10, rtol=1e-10)
    else:
        assert not torch.allclose(sde0, ode, atol=1e-6)
    sde1 = sample_dpmpp_2m_sde(model, x, sched, generator=torch.Generator().manual_seed(1))
    assert (sde1 - ode).abs().max() > 1e-3  # eta = 1 draws noise


def test_dpmpp_sde_first_step_formula(gaussian_model):
    # one step 500 -> 400 of a custom respacing, computed independently (first order: no previous x0)
    sched = respace(cosine_betas(1000), range(0, 600, 100))
    model = gaussian_model(mu=0.1, s=0.6)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    steps = []
    sample_dpmpp_2m_sde(model, x, sched, generator=torch.Generator().manual_seed(11), callback=steps.append)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    a_cur, a_next = f(501 / 1000) / f(0.0), f(401 / 1000) / f(0.0)
    lam = lambda a: 0.5 * math.log(a / (1 - a))  # noqa: E731
    h = lam(a_next) - lam(a_cur)
    eps = model(x, torch.full((2,), 500.0))[:, :3]
    x0 = ((x - math.sqrt(1 - a_cur) * eps) / math.sqrt(a_cur)).clamp(-1, 1)
    expected = (math.sqrt((1 - a_next) / (1 - a_cur)) * math.exp(-h) * x
                + math.sqrt(a_next) * (1 - math.exp(-2 * h)) * x0
                + math.sqrt(1 - a_next) * math.sqrt(1 - math.exp(-2 * h)) * z)
    torch.testing.assert_close(steps[0]["x"], expected, atol=1e-5, rtol=1e-5)


def test_get_sampler():
    assert get_sampler("dpmpp").resolve() is sample_dpmpp_2m
    assert get_sampler("dpmpp-sde").resolve() is sample_dpmpp_2m_sde
    with pytest.raises(ConfigError) as info:
        get_sampler("euler")
    assert "ddim, ddpm, dpmpp, dpmpp-sde" in str(info.value)


def test_built_in_samplers_register_once_through_their_entry_point(clean_plugin_env):
    """The host is the one registry: the built-ins come from the `samplers` plugin (distribution piti)."""
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    assert {name: host.owners["samplers"][name] for name in SAMPLERS} == {name: "samplers" for name in SAMPLERS}
    record = host.records["samplers"]
    assert record.distribution == "piti" and record.provides["samplers"] == sorted(SAMPLERS)


def test_get_sampler_asks_only_the_plugin_host(fake_entry_points):
    """Without the built-in samplers plugin no built-in sampler is found: there is no second registry."""
    with pytest.raises(ConfigError, match="unknown sampler 'ddpm'.*none installed"):
        get_sampler("ddpm")


def test_a_blocked_samplers_plugin_is_named(fake_entry_points, monkeypatch):
    fake_entry_points.keep_installed = True
    monkeypatch.setenv("PITI_DISABLE_PLUGINS", "samplers")
    with pytest.raises(ConfigError, match="unknown sampler 'ddpm'.*blocked plugins: samplers"):
        get_sampler("ddpm")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_built_in_samplers_pass_the_exported_contract_check(name):
    from piti_core.plugins import get_plugin_manager
    from piti_core.testing import assert_sampler_contract

    assert_sampler_contract(get_plugin_manager().sampler(name))  # as registered (lazy)
    assert_sampler_contract(SAMPLERS[name])  # the plain function


def _noise_from_the_global_rng(model_fn, x, schedule, *, generator=None, callback=None):
    return sample_ddpm(model_fn, x, schedule, generator=None, callback=callback)


def _returns_its_noise(model_fn, x, schedule, *, generator=None, callback=None):
    for i in range(schedule.num_timesteps):
        callback({"i": i, "total": schedule.num_timesteps, "t": 0, "x": x, "x0": x})
    return x


def _no_callback(model_fn, x, schedule, *, generator=None, callback=None):
    return sample_ddim(model_fn, x, schedule, generator=generator)


def _in_place(model_fn, x, schedule, *, generator=None, callback=None):
    return x.copy_(sample_ddim(model_fn, x, schedule, generator=generator, callback=callback))


def _bad_callback_info(model_fn, x, schedule, *, generator=None, callback=None):
    return sample_ddim(model_fn, x, schedule, generator=generator, callback=lambda info: callback({"x": info["x"]}))


def _nan(model_fn, x, schedule, *, generator=None, callback=None):
    return sample_ddim(model_fn, x, schedule, generator=generator, callback=callback) * float("nan")


def _wrong_shape(model_fn, x, schedule, *, generator=None, callback=None):
    return sample_ddim(model_fn, x, schedule, generator=generator, callback=callback)[:, :1]


@pytest.mark.parametrize("broken, match", [
    (_noise_from_the_global_rng, "outside `generator`"),
    (_returns_its_noise, "does not follow the model"),
    (_no_callback, "callback was never called"),
    (_in_place, "changed its input x in place"),
    (_bad_callback_info, "callback info lacks i, t, total, x0"),
    (_nan, "NaN/inf"),
    (_wrong_shape, "expected \\(2, 3, 16, 16\\)"),
])
def test_a_broken_sampler_fails_the_contract_check(broken, match):
    from piti_core.testing import assert_sampler_contract

    with pytest.raises(AssertionError, match=match):
        assert_sampler_contract(broken)


def test_get_sampler_finds_a_plugins_sampler(fake_entry_points):
    from piti_core.testing import make_plugin_module

    source = """
from piti_core.hookspecs import hookimpl

@hookimpl
def register_samplers(register):
    register("identity", lambda model_fn, x, schedule, **kw: x)
"""
    fake_entry_points.add("identity", make_plugin_module("piti_test_identity_sampler", source))
    x = torch.ones(SHAPE)
    assert torch.equal(get_sampler("identity")(None, x, None), x)
    with pytest.raises(ConfigError, match="identity"):
        get_sampler("euler")
