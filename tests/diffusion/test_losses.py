"""Forward process, posterior, KL / likelihood terms and the hybrid loss."""

import math

import pytest
import torch

from piti_core.diffusion.gaussian import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
)
from piti_core.diffusion.losses import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    training_losses,
    vb_terms_bpd,
)
from piti_core.diffusion.respace import build_schedule
from piti_core.errors import ConfigError


def test_q_sample_statistics(full_cosine):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 3, 64, 64), 0.5)
    t = torch.tensor([0, 100, 500, 900])
    noise = torch.randn(x0.shape, generator=g)
    xt = q_sample(x0, t, noise, full_cosine)
    ac = full_cosine.alphas_cumprod[t]
    for k in range(4):
        assert xt[k].mean().item() == pytest.approx(0.5 * math.sqrt(ac[k]), abs=0.02)
        assert xt[k].std().item() == pytest.approx(math.sqrt(1 - ac[k]), rel=0.05, abs=1e-3)


def test_xstart_eps_roundtrip(full_cosine):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1, torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 400, 998])
    xt = q_sample(x0, t, noise, full_cosine)
    torch.testing.assert_close(predict_xstart_from_eps(xt, t, noise, full_cosine), x0, atol=2e-3, rtol=0)
    torch.testing.assert_close(predict_eps_from_xstart(xt, t, x0, full_cosine), noise, atol=1e-4, rtol=1e-4)


def test_posterior_matches_bayes_formula():
    s = build_schedule("linear", 1000, "100")
    x0, xt = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    t = torch.tensor([5, 50])
    mean, var, _ = q_posterior_mean_variance(x0, xt, t, s)
    for k, i in enumerate(t.tolist()):
        ac, ac_prev = s.alphas_cumprod[i].item(), s.alphas_cumprod[i - 1].item()
        beta = 1 - ac / ac_prev
        # product of Gaussians q(x_t|x_{t-1}) q(x_{t-1}|x_0), solved for x_{t-1}
        prec = (1 - beta) / beta + 1 / (1 - ac_prev)
        m = ((math.sqrt(1 - beta) / beta) * xt[k] + math.sqrt(ac_prev) / (1 - ac_prev) * x0[k]) / prec
        torch.testing.assert_close(mean[k], m, atol=1e-5, rtol=1e-5)
        assert var[k].item() == pytest.approx(1 / prec, rel=1e-5)


def test_learned_range_endpoints():
    s = build_schedule("cosine", 1000, "250")
    x = torch.zeros(2, 3, 2, 2)
    t = torch.tensor([10, 200])
    for v, arr in ((1.0, s.betas.log()), (-1.0, s.posterior_log_variance_clipped)):
        out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
        lv = p_mean_variance(out, x, t, s)["log_variance"]
        torch.testing.assert_close(lv[:, 0, 0, 0], arr[t].float())
    with pytest.raises(ConfigError, match="out_channels"):
        p_mean_variance(torch.zeros(2, 5, 2, 2), x, t, s)


def test_normal_kl_and_discretized_likelihood():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    assert normal_kl(m1, lv1, m1, lv1).item() == pytest.approx(0.0, abs=1e-7)
    # probabilities of all 256 bins sum to 1 (edge bins extend to ±inf)
    bins = torch.linspace(-1, 1, 256)
    for mean, scale in ((0.1, 0.05), (-0.97, 0.2)):
        ll = discretized_gaussian_log_likelihood(bins, means=torch.full_like(bins, mean),
                                                 log_scales=torch.full_like(bins, math.log(scale)))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def _batch(seed=0, b=4, c=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = torch.randn(b, 2 * c, 8, 8, generator=g).clamp(-1, 1)
    return x0, noise, out


def test_hybrid_loss_mse_by_hand_and_vb_mean_detached(full_cosine):
    x0, noise, out = _batch()
    out.requires_grad_(True)
    t = torch.tensor([0, 3, 500, 999])
    xt = q_sample(x0, t, noise, full_cosine)
    terms = hybrid_loss(out, x0, xt, t, noise, full_cosine)
    assert set(terms) == {"mse", "vb", "loss"} and all(v.shape == (4,) for v in terms.values())
    hand = torch.stack([((noise[k] - out[k, :3]) ** 2).sum() / noise[k].numel() for k in range(4)])
    torch.testing.assert_close(terms["mse"], hand)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.all(grad[:, :3] == 0)
    assert grad[:, 3:].abs().sum() > 0
    (grad_loss,) = torch.autograd.grad(terms["loss"].sum(), out)
    (grad_mse,) = torch.autograd.grad(hybrid_loss(out, x0, xt, t, noise, full_cosine)["mse"].sum(), out)
    torch.testing.assert_close(grad_loss[:, :3], grad_mse[:, :3])


def test_vb_zero_for_perfect_model_and_rescaling(full_cosine):
    x0, noise, _ = _batch(1)
    t = torch.tensor([1, 10, 300, 700])
    xt = q_sample(x0, t, noise, full_cosine)
    perfect = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # true ε, σ² = β̃_t
    assert vb_terms_bpd(perfect, x0, xt, t, full_cosine).abs().max() < 1e-3
    # t=0 is the decoder NLL in bits/dim (positive, finite)
    t0 = torch.zeros(4, dtype=torch.long)
    nll = vb_terms_bpd(perfect, x0, q_sample(x0, t0, noise, full_cosine), t0, full_cosine)
    assert torch.all(nll > 0) and torch.isfinite(nll).all()
    # vb is scaled by T/1000
    half = build_schedule("cosine", 500)
    _, _, out = _batch(2)
    th = torch.tensor([0, 5, 100, 400])
    xth = q_sample(x0, th, noise, half)
    terms = hybrid_loss(out, x0, xth, th, noise, half)
    torch.testing.assert_close(terms["vb"], 0.5 * vb_terms_bpd(out, x0, xth, th, half))


def test_eps_only_and_training_losses(full_cosine, gaussian_model):
    x0, noise, _ = _batch(3)
    t = torch.tensor([0, 1, 2, 3])
    terms = hybrid_loss(noise, x0, q_sample(x0, t, noise, full_cosine), t, noise, full_cosine)
    assert torch.all(terms["vb"] == 0) and torch.all(terms["loss"] == terms["mse"])
    model = gaussian_model(mu=0.0, s=0.5)
    t = torch.tensor([5, 50, 500, 950])
    a = training_losses(model, x0, t, full_cosine, generator=torch.Generator().manual_seed(7))
    b = training_losses(model, x0, t, full_cosine, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a["loss"], b["loss"])
    assert a["pred_xstart"].shape == x0.shape and a["pred_xstart"].abs().max() <= 1
    assert torch.isfinite(a["loss"]).all()
