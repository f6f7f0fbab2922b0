"""PatchGAN discriminator and the WGAN-GP / hinge adversarial loss with its own Adam."""

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from piti_core.errors import CheckpointError, ConfigError
from piti_core.models.discriminator import NLayerDiscriminator
from piti_core.train.adversarial import AdversarialLoss


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions run faster on one thread


def test_patchgan_layout_and_shapes():
    d = NLayerDiscriminator(3, 64, 3)
    convs = [m for m in d.model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) and c.bias is not None for c in convs)
    norms = [m for m in d.model if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 and not any(n.affine or n.track_running_stats for n in norms)
    assert sum(p.numel() for p in d.parameters()) == 2_764_737  # pix2pix n_layers=3, ndf=64
    assert "model.11.weight" in d.state_dict()  # pix2pix parameter names
    with torch.no_grad():
        assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert NLayerDiscriminator(ndf=16)(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)


class LinearD(nn.Module):
    """D(x) = <w, x> per sample: ∇_x D = w everywhere, so GP = 10·(‖w‖ − 1)² exactly."""

    def __init__(self, shape, norm):
        super().__init__()
        w = torch.randn(shape)
        self.w = nn.Parameter(w / w.norm() * norm)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1).view(-1, 1, 1, 1)


def test_gradient_penalty_hand_computed():
    torch.manual_seed(0)
    d = LinearD((3, 4, 4), norm=3.0)
    adv = AdversarialLoss(d, "wgan-gp", gp_weight=10)
    fake, real = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert float(adv.gradient_penalty(fake, real).detach()) == pytest.approx(10 * (3.0 - 1) ** 2, rel=1e-5)
    w0 = d.w.detach().clone()
    logs = adv.d_step(fake, real)
    want = float((fake * w0).sum() / 5 - (real * w0).sum() / 5) + 40.0
    assert logs["gp"] == pytest.approx(40.0, rel=1e-5)
    assert logs["d_loss"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    # first Adam step moves every weight by ~lr against the gradient's sign
    assert torch.allclose((d.w.detach() - w0).abs(), torch.full_like(w0, 1e-5), rtol=1e-2)


def _pair(b=2, size=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1, torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", ["wgan-gp", "hinge"])
def test_d_step_updates_and_g_loss(kind):
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=8)
    adv = AdversarialLoss(d, kind, lr=1e-3)
    fake, real = _pair()
    before = [p.detach().clone() for p in d.parameters()]
    logs = adv.d_step(fake, real)
    assert set(logs) >= {"d_loss", "d_real", "d_fake"} and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert ("gp" in logs) == (kind == "wgan-gp")
    assert any(not torch.equal(a, b) for a, b in zip(before, d.parameters()))
    assert all(p.grad is None for p in d.parameters())
    x = fake.clone().requires_grad_(True)
    g = adv.g_loss(x)
    assert g.shape == (2,)
    with torch.no_grad():
        assert torch.allclose(g, -d(fake).flatten(1).mean(1), atol=1e-6)
    g.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())  # G loss does not touch D
    assert all(p.requires_grad for p in d.parameters())


def test_d_learns_to_separate():
    torch.manual_seed(0)
    adv = AdversarialLoss(NLayerDiscriminator(ndf=8), "wgan-gp", lr=1e-3)
    # InstanceNorm makes D blind to constant images: separate smooth "real" from noisy "fake"
    real = torch.nn.functional.interpolate(torch.randn(4, 3, 4, 4), (32, 32), mode="bilinear").tanh()
    fake = torch.randn(4, 3, 32, 32).clamp(-1, 1)
    first = adv.d_step(fake, real)
    for _ in range(15):
        last = adv.d_step(fake, real)
    assert last["d_real"] - last["d_fake"] > first["d_real"] - first["d_fake"] + 0.1


def _to_disk_and_back(state: dict) -> dict:
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    meta = json.loads(json.dumps({k: v for k, v in state.items() if not torch.is_tensor(v)}))
    assert all(k.replace(".", "").replace("_", "").isalnum() for k in state)
    return {**st_load(st_save(tensors)), **meta}


def test_state_round_trip_is_exact():
    fake, real = _pair(size=32)

    def make():
        torch.manual_seed(0)
        return AdversarialLoss(NLayerDiscriminator(ndf=8), "wgan-gp", lr=1e-3)

    a = make()
    torch.manual_seed(10)
    a.d_step(fake, real)
    a.d_step(fake, real)
    saved = _to_disk_and_back(a.state_dict())
    rng = torch.get_rng_state()
    a.d_step(fake, real)
    a.d_step(fake, real)
    b = make()
    b.load_state_dict(saved)
    assert b.d_steps == 2
    torch.set_rng_state(rng)
    b.d_step(fake, real)
    b.d_step(fake, real)
    for (k, pa), pb in zip(a.disc.state_dict().items(), b.disc.state_dict().values()):
        assert torch.equal(pa, pb), k
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_state_errors():
    adv = AdversarialLoss(NLayerDiscriminator(ndf=8), "wgan-gp")
    state = adv.state_dict()
    with pytest.raises(CheckpointError, match="train.gan"):
        AdversarialLoss(NLayerDiscriminator(ndf=8), "hinge").load_state_dict(state)
    with pytest.raises(CheckpointError, match="disc_channels"):
        AdversarialLoss(NLayerDiscriminator(ndf=16), "wgan-gp").load_state_dict(state)
    with pytest.raises(ConfigError, match="train.gan"):
        AdversarialLoss(NLayerDiscriminator(ndf=8), "lsgan")
