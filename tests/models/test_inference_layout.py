"""Channels-last UNets for CPU sampling (``piti_core.models.inference_layout``)."""

import torch

from piti_core.config import resolve_config
from piti_core.models import build_base, build_upsampler
from piti_core.models import inference_layout
from piti_core.models.inference_layout import channels_last_for_cpu_sampling
from piti_core.models.unet import UNet

SMALL = ["model.image_size=16", "model.attention_resolutions=[8,4]", "upsampler.image_size=32",
         "upsampler.super_res=16", "upsampler.attention_resolutions=[8]", "encoder.cond_size=32"]


def _randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_wide_unets_switch_on_the_cpu_and_sample_the_same(monkeypatch):
    cfg = resolve_config(preset="tiny", overrides=SMALL)
    monkeypatch.setattr(inference_layout, "CHANNELS_LAST_MIN_WIDTH", cfg.upsampler.model_channels)
    g = torch.Generator().manual_seed(1)
    for build, ucfg, low_res in ((build_base, cfg.model, None), (build_upsampler, cfg.upsampler, 16)):
        model = _randomized(build(cfg, 3)).eval()
        size, c = ucfg.image_size, cfg.encoder.cond_size
        x = torch.randn(2, 3, size, size, generator=g)
        t = torch.tensor([10.0, 700.0])
        cond = torch.randn(2, 3, c, c, generator=g)
        lr = torch.randn(2, 3, low_res, low_res, generator=g) if low_res else None
        with torch.no_grad():
            encoded = model.encode(cond)
            ref = model.decode_encoded(x, t, encoded, lr)
            switched = channels_last_for_cpu_sampling(model, "cpu")
            assert len(switched) == 1 and switched[0].channels_last
            convs = [m for m in switched[0].modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
            out = model.decode_encoded(x, t, encoded, lr)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        assert channels_last_for_cpu_sampling(model, "cpu") == []  # already switched


def test_narrow_unets_and_other_devices_keep_their_layout():
    cfg = resolve_config(preset="tiny", overrides=SMALL)
    model = build_base(cfg, 3)
    unet = next(m for m in model.modules() if isinstance(m, UNet))
    assert unet.model_channels < inference_layout.CHANNELS_LAST_MIN_WIDTH
    assert channels_last_for_cpu_sampling(model, "cpu") == [] and not unet.channels_last
    wide = resolve_config(preset="tiny", overrides=SMALL + ["model.model_channels=128", "model.channel_mult=[1]",
                                                            "model.attention_resolutions=[]"])
    model = build_base(wide, 3)
    assert channels_last_for_cpu_sampling(model, torch.device("cuda")) == []  # no device needed to decide
    assert not any(isinstance(m, UNet) and m.channels_last for m in model.modules())
