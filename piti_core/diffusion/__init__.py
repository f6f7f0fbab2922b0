"""Diffusion core: schedules, respacing, Gaussian maths, losses, timestep samplers, samplers, guidance.

Pure functions in the k-diffusion style (see each module). Typical use::

    from piti_core.diffusion import build_schedule, guided, get_sampler

    schedule = build_schedule("cosine", 1000, "250")
    model_fn = guided(unet_fn, cond, null_cond, scale=1.3, kind="plain")
    x = get_sampler("ddpm")(model_fn, noise, schedule, generator=gen, callback=cb)
"""

from piti_core.diffusion.gaussian import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
)
from piti_core.diffusion.guidance import GUIDANCE, get_guidance, guided, null_condition
from piti_core.diffusion.losses import hybrid_loss, training_losses
from piti_core.diffusion.resample import (
    TIMESTEP_SAMPLERS,
    LossSecondMomentSampler,
    UniformSampler,
    get_timestep_sampler,
)
from piti_core.diffusion.respace import build_schedule, respace, space_timesteps
from piti_core.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
)
from piti_core.diffusion.schedules import Schedule, cosine_betas, get_betas, linear_betas

__all__ = [
    "GUIDANCE",
    "SAMPLERS",
    "TIMESTEP_SAMPLERS",
    "LossSecondMomentSampler",
    "Schedule",
    "UniformSampler",
    "build_schedule",
    "cosine_betas",
    "get_betas",
    "get_guidance",
    "get_sampler",
    "get_timestep_sampler",
    "guided",
    "hybrid_loss",
    "linear_betas",
    "null_condition",
    "p_mean_variance",
    "predict_eps_from_xstart",
    "predict_xstart_from_eps",
    "q_posterior_mean_variance",
    "q_sample",
    "respace",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "space_timesteps",
    "training_losses",
]
