"""Classifier-free guidance as a wrapper around a conditional model callable.

``fn(x_t, t, cond) -> out`` is the conditional network (``out`` = (B, 2C, H, W) ``[ε̂ | v]`` or
(B, C, H, W) ``ε̂``). :func:`guided` turns it into the ``model_fn(x_t, t)`` every sampler takes:

* ``plain`` (official PITI/GLIDE): ``ε = ε_u + s·(ε_c − ε_u)``; variance channels from the
  conditional branch.
* ``normalized`` (the paper's normalized CFG): the plain guided ε̂, re-standardised per sample
  (empirical mean/std over (C, H, W)) to the conditional ε_c's statistics:
  ``ε̃ = (ε̂ − mean(ε̂))/std(ε̂)·std(ε_c) + mean(ε_c)``; variance from the conditional branch.
* ``none``: the conditional model, ``scale`` and ``null_cond`` ignored.

Scale convention: ``s`` is the official ``--sample_c`` (``s = 1`` ⇒ purely conditional, PITI uses
1.3). The paper writes ε̂ = ε_c + w(ε_c − ε_u), i.e. ``w = s − 1``. At ``s == 1`` the unconditional
branch is skipped entirely (``fn`` runs on the B rows only).

Otherwise each call runs ``fn`` ONCE on 2B rows: ``x`` duplicated, ``t`` duplicated and the condition
``[cond; null_cond]`` concatenated once at wrap time. ``cond`` may be a tensor or a tuple/list of
tensors batched on dim 0 (e.g. the task encoder's ``(tokens, pooled)``, computed once per image, not
per step). The official null condition is an all-ones condition image (:func:`null_condition`); with a
pre-encoded condition pass the encoding of that all-ones image. A ``null_cond`` with batch 1 is
broadcast to the batch of ``cond``. See docs/guidance.md.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from piti_core.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000  # samplers pass original timesteps on this 0..999 scale (Schedule.model_timesteps)

__all__ = [
    "guided",
    "plain_guidance",
    "normalized_guidance",
    "guided_steps",
    "no_guidance",
    "null_condition",
    "normalize_to",
    "GUIDANCE",
    "get_guidance",
]

CondFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The official null condition for a condition image: ``torch.ones_like(cond)`` (a white image)."""
    return torch.ones_like(cond)


def _cat_conditions(cond, null_cond):
    """``[cond; null_cond]`` along dim 0, elementwise for tuples/lists; batch-1 nulls are broadcast."""
    if isinstance(cond, (tuple, list)):
        if not isinstance(null_cond, (tuple, list)) or len(null_cond) != len(cond):
            raise ConfigError("null_cond must have the same structure as cond (a tuple of the same length)")
        return type(cond)(_cat_conditions(c, n) for c, n in zip(cond, null_cond))
    if not isinstance(cond, torch.Tensor) or not isinstance(null_cond, torch.Tensor):
        raise ConfigError("cond and null_cond must be tensors or tuples of tensors")
    if null_cond.shape[0] == 1 and cond.shape[0] != 1:
        null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])
    if null_cond.shape != cond.shape:
        raise ConfigError(f"null condition shape {tuple(null_cond.shape)} does not match condition {tuple(cond.shape)}")
    return torch.cat([cond, null_cond.to(cond)], dim=0)


def _check_scale(scale) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ConfigError(f"guidance scale must be a finite number, got {scale} (sample.guidance_scale)")
    return scale


def normalize_to(eps: torch.Tensor, ref: torch.Tensor, eps_floor: float = 1e-12) -> torch.Tensor:
    """Re-standardise ``eps`` to ``ref``'s per-sample mean and std (population std over all non-batch dims)."""
    dims = tuple(range(1, eps.ndim))
    mean, std = eps.mean(dim=dims, keepdim=True), eps.std(dim=dims, keepdim=True, unbiased=False)
    ref_mean, ref_std = ref.mean(dim=dims, keepdim=True), ref.std(dim=dims, keepdim=True, unbiased=False)
    return (eps - mean) / std.clamp_min(eps_floor) * ref_std + ref_mean


def _wrap(fn: CondFn, cond, null_cond, scale: float, normalize: bool,
          interval: tuple[float, float] = (0.0, 1.0)) -> ModelFn:
    scale = _check_scale(scale)
    if scale == 1.0:
        return lambda x, t: fn(x, t, cond)
    both = _cat_conditions(cond, null_cond)
    lo, hi = interval
    everywhere = lo <= 0.0 and hi >= 1.0

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inside = None
        if not everywhere:
            frac = t.float() / NUM_TRAIN_TIMESTEPS  # samplers pass the original timesteps, 0..999
            inside = (frac >= lo) & (frac <= hi)
            if not bool(inside.any()):
                return fn(x, t, cond)  # outside the interval: the conditional row alone
        out = fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both)
        out_c, out_u = out.split(x.shape[0], dim=0)
        c = x.shape[1]
        eps_c, eps_u = out_c[:, :c], out_u[:, :c]
        eps = eps_u + scale * (eps_c - eps_u)
        if normalize:
            eps = normalize_to(eps, eps_c)
        if inside is not None and not bool(inside.all()):  # rows at other timesteps: conditional, unguided
            eps = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), eps, eps_c)
        return torch.cat([eps, out_c[:, c:]], dim=1)

    return model_fn


def plain_guidance(fn: CondFn, cond, null_cond, scale: float, interval=(0.0, 1.0)) -> ModelFn:
    """Official CFG: ``ε_u + s·(ε_c − ε_u)``, variance channels of the conditional branch."""
    return _wrap(fn, cond, null_cond, scale, normalize=False, interval=interval)


def normalized_guidance(fn: CondFn, cond, null_cond, scale: float, interval=(0.0, 1.0)) -> ModelFn:
    """The paper's normalized CFG: plain guided ε̂ rescaled to ε_c's per-sample mean and std."""
    return _wrap(fn, cond, null_cond, scale, normalize=True, interval=interval)


def no_guidance(fn: CondFn, cond, null_cond=None, scale: float = 1.0, interval=(0.0, 1.0)) -> ModelFn:
    """The conditional model alone (``null_cond`` and ``scale`` ignored), e.g. for the upsampler."""
    return lambda x, t: fn(x, t, cond)


GUIDANCE: dict[str, Callable[..., ModelFn]] = {
    "plain": plain_guidance,
    "normalized": normalized_guidance,
    "none": no_guidance,
}


def get_guidance(name: str) -> Callable[..., ModelFn]:
    """The guidance wrapper registered as ``name`` (``sample.guidance`` in the config)."""
    try:
        return GUIDANCE[name]
    except KeyError:
        valid = ", ".join(sorted(GUIDANCE))
        raise ConfigError(f"unknown guidance {name!r} (sample.guidance); valid names: {valid}") from None


def guided_steps(schedule, interval: tuple[float, float] = (0.0, 1.0)) -> int:
    """How many steps of ``schedule`` (a respaced Schedule) fall inside the guidance ``interval``: the
    steps that run the 2-row guided pass; the others run the conditional row alone."""
    n = len(schedule.timestep_map) if schedule.timestep_map is not None else int(schedule.num_timesteps)
    frac = schedule.model_timesteps(torch.arange(n)) / NUM_TRAIN_TIMESTEPS
    lo, hi = interval
    return int(((frac >= lo) & (frac <= hi)).sum())


def guided(fn: CondFn, cond, null_cond, scale: float, kind: str = "plain",
           interval: tuple[float, float] = (0.0, 1.0)) -> ModelFn:
    """Wrap the conditional ``fn(x, t, cond)`` into a guided ``model_fn(x, t)`` (see module doc).

    Args:
        fn: the conditional network.
        cond: the condition (tensor or tuple of tensors, batch B on dim 0).
        null_cond: the null condition, same structure (batch B or 1).
        scale: official guidance scale s (paper w = s − 1); 1 ⇒ conditional only, no extra pass.
        kind: ``"plain"``, ``"normalized"`` or ``"none"``.
        interval: ``(lo, hi)`` fractions of T: guidance only at steps with ``lo <= t/T <= hi``, the
            conditional row alone elsewhere (guidance in a limited interval, Kynkäänniemi et al.
            2024); ``(0, 1)``: every step.
    """
    wrap = get_guidance(kind)
    interval = tuple(float(v) for v in interval)
    if interval == (0.0, 1.0):
        return wrap(fn, cond, null_cond, scale)
    return wrap(fn, cond, null_cond, scale, interval=interval)
