"""Classifier-free guidance wrappers (plain, normalized, none)."""

import pytest
import torch

from piti_core.diffusion.guidance import GUIDANCE, get_guidance, guided, normalize_to, null_condition
from piti_core.diffusion.respace import build_schedule
from piti_core.diffusion.samplers import SAMPLERS
from piti_core.errors import ConfigError

B, C = 3, 3


class CondModel:
    """Conditional toy network: ε depends on x, t and the condition; records every call."""

    def __init__(self, learned=True):
        self.calls = []
        self.learned = learned

    def __call__(self, x, t, cond):
        tokens, pooled = cond if isinstance(cond, tuple) else (cond, cond.mean(dim=(1, 2, 3)))
        self.calls.append((x.shape[0], cond))
        shift = tokens.reshape(tokens.shape[0], -1)[:, :C].reshape(-1, C, 1, 1)
        eps = 0.5 * x + shift * (1 + pooled.reshape(-1, 1, 1, 1) ** 2) + 1e-3 * t.reshape(-1, 1, 1, 1)
        if not self.learned:
            return eps
        return torch.cat([eps, torch.tanh(x + shift)], dim=1)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, 8, 8, generator=g)
    t = torch.full((B,), 640.0)
    cond = torch.rand(B, 4, 16, 16, generator=g) * 2 - 1
    return x, t, cond


@pytest.mark.parametrize("kind", ["plain", "normalized"])
def test_scale_one_is_the_conditional_model_on_batch_b(kind):
    x, t, cond = _inputs()
    model = CondModel()
    out = guided(model, cond, null_condition(cond), 1.0, kind=kind)(x, t)
    torch.testing.assert_close(out, CondModel()(x, t, cond), rtol=0, atol=0)
    assert [n for n, _ in model.calls] == [B]


@pytest.mark.parametrize("learned", [True, False])
def test_plain_formula_and_conditional_variance(learned):
    x, t, cond = _inputs(1)
    null = null_condition(cond)
    model = CondModel(learned)
    out = guided(model, cond, null, 1.7, kind="plain")(x, t)
    ref = CondModel(learned)
    c, u = ref(x, t, cond), ref(x, t, null)
    torch.testing.assert_close(out[:, :C], u[:, :C] + 1.7 * (c[:, :C] - u[:, :C]))
    assert out.shape == c.shape
    if learned:
        torch.testing.assert_close(out[:, C:], c[:, C:])
    assert len(model.calls) == 1 and model.calls[0][0] == 2 * B


def test_normalized_matches_conditional_statistics():
    x, t, cond = _inputs(2)
    null = null_condition(cond)
    out = guided(CondModel(), cond, null, 3.0, kind="normalized")(x, t)
    ref = CondModel()
    c, u = ref(x, t, cond), ref(x, t, null)
    eps_c, plain = c[:, :C], u[:, :C] + 3.0 * (c[:, :C] - u[:, :C])
    dims = (1, 2, 3)
    torch.testing.assert_close(out[:, :C].mean(dims), eps_c.mean(dims), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :C].std(dims), eps_c.std(dims), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain.std(dims), eps_c.std(dims), rtol=0.05)  # guidance did inflate it
    # same direction as plain guidance: a per-sample affine map of it
    standardized = (plain - plain.mean(dims, keepdim=True)) / plain.std(dims, keepdim=True)
    back = (out[:, :C] - out[:, :C].mean(dims, keepdim=True)) / out[:, :C].std(dims, keepdim=True)
    torch.testing.assert_close(back, standardized, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[:, C:], c[:, C:])
    torch.testing.assert_close(normalize_to(eps_c, eps_c), eps_c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_batched_call_per_step_with_tuple_condition(name):
    sched = build_schedule("cosine", 1000, "6")
    g = torch.Generator().manual_seed(0)
    tokens, pooled = torch.randn(B, 5, 4, generator=g), torch.randn(B, generator=g)
    null = (torch.ones(1, 5, 4), torch.zeros(1))  # batch-1 null encoding, broadcast
    model = CondModel()
    model_fn = guided(model, (tokens, pooled), null, 1.5, kind="plain")
    x = torch.randn(B, C, 8, 8, generator=g)
    SAMPLERS[name](model_fn, x, sched, generator=g)
    assert len(model.calls) == 6
    assert all(n == 2 * B for n, _ in model.calls)
    first = model.calls[0][1]
    assert all(cond is first for _, cond in model.calls)  # concatenated once, not per step
    torch.testing.assert_close(first[0][B:], torch.ones(B, 5, 4))
    torch.testing.assert_close(first[1][:B], pooled)


def test_none_and_registry():
    x, t, cond = _inputs(3)
    model = CondModel()
    out = guided(model, cond, None, 5.0, kind="none")(x, t)
    torch.testing.assert_close(out, CondModel()(x, t, cond))
    assert [n for n, _ in model.calls] == [B]
    assert set(GUIDANCE) == {"plain", "normalized", "none"}
    with pytest.raises(ConfigError) as info:
        get_guidance("cfg++")
    assert "none, normalized, plain" in str(info.value)
    with pytest.raises(ConfigError):
        guided(model, cond, torch.ones(B, 1, 16, 16), 2.0)
    with pytest.raises(ConfigError):
        guided(model, cond, null_condition(cond), float("nan"))
    assert torch.equal(null_condition(cond), torch.ones_like(cond))


@pytest.mark.parametrize("kind", ["plain", "normalized"])
def test_guidance_interval_runs_one_row_outside_and_guides_inside(kind):
    x, t, cond = _inputs(2)
    null = null_condition(cond)
    model = CondModel()
    fn = guided(model, cond, null, 2.0, kind=kind, interval=(0.3, 0.7))
    everywhere = guided(CondModel(), cond, null, 2.0, kind=kind)
    torch.testing.assert_close(fn(x, t), everywhere(x, t))  # t = 640: inside
    assert [n for n, _ in model.calls] == [2 * B]
    high = torch.full((B,), 900.0)
    torch.testing.assert_close(fn(x, high), CondModel()(x, high, cond), rtol=0, atol=0)  # outside: conditional
    assert [n for n, _ in model.calls][-1] == B  # one row per image, no null pass
    mixed = torch.tensor([100.0, 500.0, 950.0])  # rows at different steps: only the middle one guided
    out = fn(x, mixed)
    torch.testing.assert_close(out[1], everywhere(x, mixed)[1])
    torch.testing.assert_close(out[[0, 2]], CondModel()(x, mixed, cond)[[0, 2]])


def test_guidance_interval_config_and_cli_errors():
    from click.testing import CliRunner

    from piti_cli.main import cli
    from piti_core.config import resolve_config

    assert resolve_config(preset="tiny", overrides=["sample.guidance_interval=0.2,0.8"]).sample.guidance_interval == \
        (0.2, 0.8)
    with pytest.raises(ConfigError, match="guidance_interval"):
        resolve_config(preset="tiny", overrides=["sample.guidance_interval=0.8,0.2"])
    res = CliRunner().invoke(cli, ["sample", "--run", "nowhere", "--input", "x.png", "--guidance-interval", "0.5"])
    assert res.exit_code == 2 and "--guidance-interval" in res.output and "Traceback" not in res.output


def test_guidance_interval_from_toml_values():
    from piti_core.config import resolve_config

    assert resolve_config(preset="tiny", overrides=["sample.guidance_interval=[0.25, 0.75]"]).sample.guidance_interval \
        == (0.25, 0.75)
    with pytest.raises(ConfigError, match="two numbers"):  # a single TOML number, named as such
        resolve_config(preset="tiny", overrides=["sample.guidance_interval=0.5"])
