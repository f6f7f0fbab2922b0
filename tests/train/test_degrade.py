"""BSRGAN-light degradation: shapes, range, determinism, no black draws (official L0 bug), bicubic mode."""

import pytest
import torch
import torch.nn.functional as F

from piti_core.errors import ConfigError
from piti_core.train.degrade import BSRGANLight, degrade, gaussian_kernel, quantize


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions run faster on one thread


def _photo(size: int, batch: int = 1) -> torch.Tensor:
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.interpolate(x, (size, size), mode="area")
    return torch.cat([x.roll(17 * i, dims=-1) for i in range(batch)])


@pytest.mark.parametrize("hr,lr", [(256, 64), (64, 32)])
def test_shape_range_and_levels(hr, lr):
    x = _photo(hr, 3)
    torch.manual_seed(0)
    y = degrade(x, lr)
    assert y.shape == (3, 3, lr, lr) and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    levels = (y + 1) * 127.5  # quantize="round": exact uint8 levels
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert not torch.equal(y[0], y[1])  # each sample draws its own degradation


def test_deterministic_under_seed_and_generator():
    x = _photo(64, 2)
    torch.manual_seed(5)
    a = degrade(x, 32)
    torch.manual_seed(5)
    b = degrade(x, 32)
    torch.manual_seed(6)
    c = degrade(x, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    d = degrade(x, 32, generator=g1)
    torch.manual_seed(1)  # the global RNG does not matter when a generator is given
    e = degrade(x, 32, generator=g2)
    assert torch.equal(d, e)


def test_never_black_l0_regression():
    """The official L0 branch (p=0.2) blacks out the low-res input; over 50 draws none may be dark."""
    x = _photo(64, 50)
    torch.manual_seed(0)
    y = degrade(x, 32)
    means = ((y + 1) / 2).mean(dim=(1, 2, 3))
    assert means.min() > 10 / 255
    ref = F.interpolate((x + 1) / 2, (32, 32), mode="area").mean(dim=(1, 2, 3))
    assert (means - ref).abs().max() < 0.1  # brightness preserved: degradations are local


def test_degrades_something():
    x = _photo(256, 8)
    torch.manual_seed(1)
    y = degrade(x, 64)
    plain = degrade(x, 64, kind="bicubic")
    diff = (y - plain).abs().mean(dim=(1, 2, 3))
    assert (diff > 0.01).all() and (diff < 0.3).all()


def test_bicubic_mode_is_antialiased_resize():
    x = _photo(64, 2)
    want = F.interpolate((x + 1) / 2, (32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    got = degrade(x, 32, kind="bicubic", quantize_mode="none")
    assert torch.allclose(got, want * 2 - 1, atol=1e-6)
    q = degrade(x, 32, kind="bicubic")
    assert torch.allclose(q, torch.round(want * 255) / 255 * 2 - 1, atol=1e-6)


def test_quantize_truncate_matches_inference():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    official = (127.5 * (x + 1)).int() / 127.5 - 1
    assert torch.allclose(quantize((x + 1) / 2, "truncate") * 2 - 1, official, atol=1e-6)


def test_only_the_chosen_steps_change_the_image():
    """All random steps off (no prescale/blur/JPEG) -> only resizes and ±2/255 noise remain."""
    x = _photo(64, 4)
    opts = BSRGANLight(prescale_p=0.0, blur_p=0.0, resize_p=1.0, jpeg_p=0.0, noise_levels=(1, 1))
    torch.manual_seed(0)
    y = degrade(x, 32, options=opts, quantize_mode="none")
    assert y.shape == (4, 3, 32, 32) and torch.isfinite(y).all()


def test_kernel_matches_bsrgan_layout():
    k = gaussian_kernel(6, torch.eye(2, dtype=torch.float64) * 0.8)
    assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.flip(1))  # even size: half-pixel symmetric
    assert abs(float(k.sum()) - 1) < 1e-6
    shifted = gaussian_kernel(25, torch.eye(2, dtype=torch.float64), shift=1.5)
    iy, ix = divmod(int(shifted.argmax()), 25)
    assert (iy, ix) in [(10, 10), (11, 11), (10, 11), (11, 10)]  # peak moved up-left from 12 by 1.5


def test_bad_sizes_and_kinds():
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ConfigError, match="integer scale factor"):
        degrade(x, 48)
    with pytest.raises(ConfigError, match="train.degradation"):
        degrade(x, 32, kind="realesrgan")
