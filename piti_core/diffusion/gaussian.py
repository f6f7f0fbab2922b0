"""Gaussian diffusion maths: forward process, posterior, and the model's p(x_{t−1} | x_t).

Pure functions of tensors and a :class:`~piti_core.diffusion.schedules.Schedule`. ``t`` is always an
int64 tensor of shape (B,) holding indices into the schedule (respaced indices when the schedule is
respaced), never original timesteps; map them for the network with ``schedule.model_timesteps(t)``.

Model output convention (PITI/GLIDE: ``ModelMeanType.EPSILON``):

* (B, 2C, H, W) = ``[ε̂ | v]`` with a *learned-range* variance: ``frac = (v+1)/2``,
  ``log σ² = frac·log β_t + (1−frac)·log β̃_t`` (β̃ clipped), β and β̃ of the schedule being sampled;
* (B, C, H, W) = ``ε̂`` only, with the official fixed-large variance (β_t, β̃_1 at t=0).
"""

from __future__ import annotations

import torch

from piti_core.diffusion.schedules import Schedule, extract
from piti_core.errors import ConfigError

__all__ = [
    "q_sample",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "predict_xstart_from_eps",
    "predict_eps_from_xstart",
    "split_model_output",
    "model_log_variance",
    "p_mean_variance",
]


def q_mean_variance(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """Mean, variance and log-variance of q(x_t | x_0)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    variance = extract(1.0 - schedule.alphas_cumprod, t, x0)
    log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
    return mean, variance, log_variance


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) with the given standard-normal ``noise``: √ᾱ_t·x_0 + √(1−ᾱ_t)·ε."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """Mean, variance and clipped log-variance of the posterior q(x_{t−1} | x_t, x_0)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def predict_xstart_from_eps(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x̂_0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂."""
    return extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t
    ) * eps


def predict_eps_from_xstart(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """ε̂ = (√(1/ᾱ_t)·x_t − x̂_0) / √(1/ᾱ_t − 1)."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t
    )


def split_model_output(model_output: torch.Tensor, channels: int):
    """Split a model output into ``(eps, v)``; ``v`` is None for an eps-only (C-channel) output.

    Raises:
        ConfigError: the output has neither C nor 2C channels (unet.out_channels vs learn_sigma).
    """
    k = model_output.shape[1]
    if k == 2 * channels:
        return model_output[:, :channels], model_output[:, channels:]
    if k == channels:
        return model_output, None
    raise ConfigError(
        f"model output has {k} channels for a {channels}-channel image; expected {channels} (eps) or "
        f"{2 * channels} (eps + learned variance): check unet.out_channels against diffusion.learn_sigma"
    )


def model_log_variance(v: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """(variance, log-variance) of p(x_{t−1}|x_t): learned range from ``v``, or fixed-large if ``v`` is None."""
    if v is None:
        # official FIXED_LARGE: β_t, with β̃_1 in place of β_0 (= log of append(β̃_1, β_1:))
        log_var_arr = torch.cat([schedule.posterior_log_variance_clipped[:1], schedule.log_betas[1:]])
        log_var = extract(log_var_arr, t, x_t).expand_as(x_t)
        return log_var.exp(), log_var
    min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = extract(schedule.log_betas, t, x_t)
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    return log_var.exp(), log_var


def p_mean_variance(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    *,
    clip_denoised: bool = True,
) -> dict[str, torch.Tensor]:
    """The model's p(x_{t−1} | x_t) from its raw output (official ``p_mean_variance``).

    Args:
        model_output: (B, 2C, ...) ``[ε̂ | v]`` or (B, C, ...) ``ε̂``.
        x_t: (B, C, ...) the current sample.
        t: (B,) int indices into ``schedule``.
        clip_denoised: clamp x̂_0 to [−1, 1] before forming the posterior mean.

    Returns:
        dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` (x̂_0) and ``eps`` (ε̂ as output).
    """
    eps, v = split_model_output(model_output, x_t.shape[1])
    variance, log_variance = model_log_variance(v, x_t, t, schedule)
    pred_xstart = predict_xstart_from_eps(x_t, t, eps, schedule)
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean, _, _ = q_posterior_mean_variance(pred_xstart, x_t, t, schedule)
    return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}
