"""Parameter counts of the official sizes (spec §1.4), built on the meta device (no memory)."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.models import build_base, build_text_prior, build_upsampler, count_parameters


@pytest.fixture(scope="module")
def glide():
    return resolve_config(preset="glide")


@pytest.mark.parametrize("channels,total,encoder", [
    (3, 338_015_302, 29_286_400),  # mask
    (1, 338_012_166, 29_283_264),  # sketch
    (6, 338_020_006, 29_291_104),  # depth + normal
])
def test_base(glide, channels, total, encoder):
    with torch.device("meta"):
        model = build_base(glide, channels)
    assert count_parameters(model) == total
    assert count_parameters(model.encoder) == encoder
    assert count_parameters(model.decoder) == 308_728_902
    assert count_parameters(model.decoder.transformer_proj) == 393_984
    assert len(list(model.buffers())) == 0


@pytest.mark.parametrize("channels,total", [(3, 351_345_862), (1, 351_342_726)])
def test_upsampler(glide, channels, total):
    with torch.device("meta"):
        model = build_upsampler(glide, channels)
    assert count_parameters(model) == total
    assert count_parameters(model.decoder) == 322_059_462


def test_encoder_split_and_encoder_kv(glide):
    with torch.device("meta"):
        base, up = build_base(glide, 3), build_upsampler(glide, 3)
    enc = base.encoder
    assert count_parameters(enc.cnn) == 3_934_208
    assert count_parameters(enc.transformer) == 25_219_072
    assert count_parameters(enc.transformer.resblocks[0]) == 3_152_384
    kv = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".encoder_kv." in n)  # noqa: E731
    assert kv(base.decoder) == 13_198_464
    assert kv(up.decoder) == 10_637_568
    for model, count in ((base, 22), (up, 16)):
        names = [n for n, m in model.decoder.named_modules() if hasattr(m, "encoder_kv")]
        assert len(names) == count
        assert all(n.endswith(".1") for n in names)  # attention sits at sub-index 1, as in the official layout


def test_text_prior_is_glide_sized(glide):
    """GLIDE's decoder + a 16-layer caption transformer over 257 byte tokens."""
    with torch.device("meta"):
        model = build_text_prior(glide)
    text_side = 257 * 512 + 2 * 128 * 512 + 16 * 3_152_384 + 2 * 512
    assert count_parameters(model.encoder) == text_side
    assert count_parameters(model) == 308_728_902 + text_side
