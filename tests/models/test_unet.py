"""UNet / PitiModel behaviour at tiny sizes: shapes, zero-init output, options that must not change results."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.errors import DataError
from piti_core.models import build_base, build_upsampler, inference_layout, layers
from piti_core.models.inference_layout import channels_last_for_cpu_sampling
from piti_core.models.layers import timestep_embedding
from piti_core.models.unet import UNet


SMALL = ["model.image_size=16", "model.attention_resolutions=[8,4]", "upsampler.image_size=32",
         "upsampler.super_res=16", "upsampler.attention_resolutions=[8]", "encoder.cond_size=32"]


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset's structure at half its image sizes (fast on a shared CPU)."""
    return resolve_config(preset="tiny", overrides=SMALL)


def _randomize(model, seed=0):
    """Well-scaled random weights everywhere (the zero-initialised convolutions included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # norm gains
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and "embedding" not in name and "cls_token" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _batch(cfg, b=2, size=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = size or cfg.model.image_size
    s = cfg.encoder.cond_size
    return (torch.randn(b, 3, size, size, generator=g), torch.tensor([10.0, 900.0][:b]),
            torch.randn(b, 3, s, s, generator=g))


def test_fresh_model_outputs_zero(tiny):
    """The output convolution is zero-initialised, as in the official code."""
    model = build_base(tiny, 3).eval()
    x, t, cond = _batch(tiny)
    out = model(x, t, cond)
    assert out.shape == (2, 6, tiny.model.image_size, tiny.model.image_size)
    assert torch.count_nonzero(out) == 0


def test_encode_decode_equals_forward_and_scalar_timestep(tiny):
    torch.manual_seed(0)
    model = _randomize(build_base(tiny, 3)).eval()
    x, _, cond = _batch(tiny)
    with torch.no_grad():
        tokens, pooled, *hints = model.encode(cond)
        assert tokens.shape == (2, (tiny.encoder.cond_size // 16) ** 2, tiny.encoder.width)
        a = model(x, torch.tensor([5.0, 5.0]), cond)
        b = model.decode(x, torch.tensor(5.0), tokens, pooled, hints=hints or None)
    torch.testing.assert_close(a, b)
    assert a.abs().max() > 0


def test_condition_and_timestep_change_the_output(tiny):
    model = _randomize(build_base(tiny, 3)).eval()
    x, t, cond = _batch(tiny)
    with torch.no_grad():
        base = model(x, t, cond)
        assert (model(x, t, -cond) - base).abs().max() > 1e-4
        assert (model(x, t + 100, cond) - base).abs().max() > 1e-4


def test_upsampler_needs_and_uses_low_res(tiny):
    model = _randomize(build_upsampler(tiny, 3)).eval()
    size = tiny.upsampler.image_size
    x, t, cond = _batch(tiny, size=size)
    low = torch.randn(2, 3, tiny.upsampler.super_res, tiny.upsampler.super_res)
    with torch.no_grad():
        out = model(x, t, cond, low_res=low)
        assert out.shape == (2, 6, size, size)
        assert (model(x, t, cond, low_res=-low) - out).abs().max() > 1e-4
        with pytest.raises(DataError, match="low_res"):
            model(x, t, cond)


def test_checkpointing_and_channels_last_give_same_results(tiny):
    cfgs = {
        "plain": tiny,
        "ckpt": resolve_config(preset="tiny", overrides=SMALL + ["model.checkpointing=true"]),
        "cl": resolve_config(preset="tiny", overrides=SMALL + ["model.channels_last=true"]),
    }
    x, t, cond = _batch(tiny)
    results = {}
    for name, cfg in cfgs.items():
        model = _randomize(build_base(cfg, 3)).train()  # tiny preset: dropout 0
        loss = model(x, t, cond).square().mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[name] = (loss.detach(), grads)
    assert cfgs["cl"].model.channels_last
    for name in ("ckpt", "cl"):
        torch.testing.assert_close(results[name][0], results["plain"][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(results[name][1], results["plain"][1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_nine_matmul_weight_grads_give_the_same_gradients(tiny, checkpointing, monkeypatch):
    """The CPU weight-gradient path of ``layers.Conv2d``, forced onto every 3×3 conv of a small UNet
    (with and without checkpointing): the same loss and gradients as oneDNN's."""
    cfg = resolve_config(preset="tiny", overrides=SMALL + [f"model.checkpointing={str(checkpointing).lower()}"])
    x, t, cond = _batch(tiny)
    calls = []
    real = layers.conv3x3_weight_grad
    monkeypatch.setattr(layers, "conv3x3_weight_grad", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(layers, "SHIFT_GRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(layers, "SHIFT_GRAD_BATCH_MIN_CHANNELS", 1)
    results = {}
    for on in (False, True):
        monkeypatch.setattr(layers, "SHIFT_GRAD", on)
        model = _randomize(build_base(cfg, 3)).train()
        loss = model(x, t, cond).square().mean()
        loss.backward()
        results[on] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert len(calls) > 5, "the path ran for the UNet's 3x3 convs"
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-6, rtol=1e-4)


def test_sampling_preparation_makes_wide_unets_channels_last_on_the_cpu(tiny, monkeypatch):
    """``prepare_for_sampling`` (piti sample / eval and the compare bench): UNets at least
    ``CHANNELS_LAST_MIN_WIDTH`` wide switch to channels-last on the CPU and sample the same."""
    from piti_core.generate import prepare_for_sampling

    monkeypatch.setattr(inference_layout, "CHANNELS_LAST_MIN_WIDTH", tiny.upsampler.model_channels)
    for build, size, low in ((build_base, tiny.model.image_size, None),
                             (build_upsampler, tiny.upsampler.image_size, tiny.upsampler.super_res)):
        model = _randomize(build(tiny, 3)).eval()
        x, t, cond = _batch(tiny, size=size)
        low_res = torch.randn(2, 3, low, low) if low else None
        with torch.no_grad():
            ref = model(x, t, cond, low_res=low_res)
            prepare_for_sampling(model, torch.float32, "cpu")
            unets = [m for m in model.modules() if isinstance(m, UNet)]
            assert len(unets) == 1 and unets[0].channels_last
            convs = [m for m in unets[0].modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
            torch.testing.assert_close(model(x, t, cond, low_res=low_res), ref, rtol=1e-4, atol=1e-4)
        assert channels_last_for_cpu_sampling(model, "cpu") == []  # already switched


def test_narrow_unets_and_other_devices_keep_their_layout(tiny):
    model = build_base(tiny, 3)
    unet = next(m for m in model.modules() if isinstance(m, UNet))
    assert unet.model_channels < inference_layout.CHANNELS_LAST_MIN_WIDTH
    assert channels_last_for_cpu_sampling(model, "cpu") == [] and not unet.channels_last
    wide = resolve_config(preset="tiny", overrides=SMALL + ["model.model_channels=128", "model.channel_mult=[1]",
                                                            "model.attention_resolutions=[]"])
    model = build_base(wide, 3)
    assert channels_last_for_cpu_sampling(model, torch.device("cuda")) == []  # no device needed to decide
    assert not any(isinstance(m, UNet) and m.channels_last for m in model.modules())


def test_bf16_autocast_runs_and_is_close(tiny):
    model = _randomize(build_base(tiny, 3)).eval()
    x, t, cond = _batch(tiny)
    with torch.no_grad():
        ref = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
