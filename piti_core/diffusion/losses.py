"""Training losses: KL / discretized-Gaussian terms and Improved-DDPM's hybrid loss.

PITI trains with ``loss_type=RESCALED_MSE`` and learned-range variances (spec §3)::

    loss = mean_flat((ε − ε̂)²) + L_vb(t) · T/1000

where L_vb is the variational-bound term in bits/dim computed with the *mean detached* (ε̂ gets no
gradient from it; it only trains the variance channels v). L_vb(0) is the discretized Gaussian
decoder NLL, L_vb(t>0) the KL between the true posterior and p(x_{t−1}|x_t).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from piti_core.diffusion.gaussian import (
    p_mean_variance,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
    split_model_output,
)
from piti_core.diffusion.schedules import Schedule

__all__ = [
    "mean_flat",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "vb_terms_bpd",
    "hybrid_loss",
    "training_losses",
]

_LN2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (tensors or floats broadcast)."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    logvar1, logvar2 = (x if isinstance(x, torch.Tensor) else torch.tensor(x).to(tensor) for x in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (the one the official code uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of 8-bit data ``x`` in [−1, 1] under a Gaussian discretized to
    bins of width 2/255; the edge bins extend to ±∞."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    *,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Per-sample variational-bound term in bits/dim: decoder NLL at t=0, KL(q‖p) elsewhere."""
    true_mean, _, true_log_var = q_posterior_mean_variance(x0, x_t, t, schedule)
    out = p_mean_variance(model_output, x_t, t, schedule, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / _LN2
    nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
    nll = mean_flat(nll) / _LN2
    return torch.where(t == 0, nll, kl)


def hybrid_loss(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
) -> dict[str, torch.Tensor]:
    """Per-sample loss terms from a model output (official ``training_losses``, RESCALED_MSE).

    Args:
        model_output: (B, 2C, ...) ``[ε̂ | v]`` or (B, C, ...) ``ε̂``.
        x0, x_t, noise: the clean batch, its noised version (``q_sample(x0, t, noise)``) and the noise.
        t: (B,) int indices into ``schedule`` (the training schedule, normally the full T=1000 one).

    Returns:
        ``{"mse", "vb", "loss"}``, each of shape (B,). ``vb`` is computed from ``[ε̂.detach() | v]`` and
        scaled by T/1000; it is all zeros for an eps-only output (fixed variance, nothing to learn).
    """
    eps, v = split_model_output(model_output, x0.shape[1])
    mse = mean_flat((noise - eps) ** 2)
    if v is None:
        vb = torch.zeros_like(mse)
    else:
        frozen = torch.cat([eps.detach(), v], dim=1)
        vb = vb_terms_bpd(frozen, x0, x_t, t, schedule, clip_denoised=False) * (schedule.num_timesteps / 1000.0)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def training_losses(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Noise ``x0`` at ``t``, run ``model_fn(x_t, schedule.model_timesteps(t))`` and return the loss terms.

    Returns :func:`hybrid_loss`'s per-sample ``mse``/``vb``/``loss`` plus ``pred_xstart``: x̂_0 from ε̂
    clamped to [−1, 1] (with gradient), for the upsampler's perceptual and adversarial losses (spec §6),
    and ``x_t``. Multiply ``loss`` by the timestep sampler's importance weights before averaging.
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, schedule)
    out = model_fn(x_t, schedule.model_timesteps(t))
    terms = hybrid_loss(out, x0, x_t, t, noise, schedule)
    eps, _ = split_model_output(out, x0.shape[1])
    terms["pred_xstart"] = predict_xstart_from_eps(x_t, t, eps, schedule).clamp(-1, 1)
    terms["x_t"] = x_t
    return terms
