"""Noise schedules (β_t) and the :class:`Schedule` that holds every array derived from them.

Everything here follows the official ``gaussian_diffusion.py`` (guided-diffusion / GLIDE / PITI) to the
bit: the β array is built in float64 numpy, every derived array is computed in float64, and values are
gathered per timestep and cast to the sample's dtype only at use (see :func:`extract`).

* ``cosine`` (``squaredcos_cap_v2``, the base 64×64 model): ``ᾱ(t) = cos²(((t/T)+0.008)/1.008 · π/2)``,
  ``β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)``.
* ``linear`` (the 64→256 upsampler): β from 1e-4 to 0.02, both scaled by 1000/T.

A :class:`Schedule` may be *respaced* (see :mod:`piti_core.diffusion.respace`): it then has fewer steps
and its :attr:`Schedule.timestep_map` gives, for each respaced index, the original 0..T−1 timestep
that the network is conditioned on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from piti_core.errors import ConfigError

__all__ = [
    "Schedule",
    "cosine_betas",
    "linear_betas",
    "get_betas",
    "extract",
    "BETA_SCHEDULES",
]


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """GLIDE's ``squaredcos_cap_v2`` schedule as a float64 array of ``num_timesteps`` betas."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule, 1e-4 → 0.02 scaled by 1000/T so any T spans the same noise range."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


BETA_SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


def get_betas(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """The float64 β array of the named schedule (``"cosine"`` or ``"linear"``)."""
    if name not in BETA_SCHEDULES:
        raise ConfigError(
            f"unknown noise schedule {name!r} (diffusion.schedule); choose one of {sorted(BETA_SCHEDULES)}"
        )
    if int(num_timesteps) < 1:
        raise ConfigError(f"diffusion.steps must be >= 1, got {num_timesteps}")
    return BETA_SCHEDULES[name](int(num_timesteps))


def _f64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Schedule:
    """A (possibly respaced) discrete Gaussian diffusion: β_t and every array derived from it.

    Construct it from betas only; the other arrays are computed in float64 exactly as in the official
    ``GaussianDiffusion.__init__``. All arrays are float64 CPU tensors of length :attr:`num_timesteps`.

    Attributes:
        betas: β_t of this (respaced) process.
        timestep_map: int64, respaced index → original timestep (identity when not respaced).
        original_num_steps: T of the schedule this one was respaced from (1000 for PITI).
        alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next: ᾱ_t, ᾱ_{t−1} (1 at t=0), ᾱ_{t+1} (0 at the end).
        sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
        sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod: the usual q(x_t|x_0) / x_0-from-ε coefs.
        posterior_variance: β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t) (0 at t=0).
        posterior_log_variance_clipped: log β̃_t with β̃_0 replaced by β̃_1 (β_0 when only one step).
        posterior_mean_coef1, posterior_mean_coef2: μ̃_t = coef1·x_0 + coef2·x_t.
        log_betas: log β_t (the upper end of the learned-range variance).
    """

    betas: torch.Tensor
    timestep_map: torch.Tensor | None = None
    original_num_steps: int | None = None
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod_next: torch.Tensor = field(init=False, repr=False)
    sqrt_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    log_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_recip_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_recipm1_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    posterior_variance: torch.Tensor = field(init=False, repr=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef1: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef2: torch.Tensor = field(init=False, repr=False)
    log_betas: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        b = np.asarray(
            self.betas.detach().cpu().numpy() if isinstance(self.betas, torch.Tensor) else self.betas,
            dtype=np.float64,
        )
        if b.ndim != 1 or len(b) == 0:
            raise ConfigError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        if not ((b > 0).all() and (b <= 1).all()):
            raise ConfigError("betas must lie in (0, 1]; check the noise schedule")
        n = len(b)
        tmap = np.arange(n) if self.timestep_map is None else np.asarray(self.timestep_map, dtype=np.int64)
        if tmap.shape != (n,):
            raise ConfigError(f"timestep_map has {tmap.shape} entries for {n} betas")
        orig = int(self.original_num_steps) if self.original_num_steps is not None else int(tmap.max()) + 1

        alphas = 1.0 - b
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        ac_next = np.append(ac[1:], 0.0)
        with np.errstate(divide="ignore"):
            post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        floor = post_var[1] if n > 1 else b[0]
        arrays = {
            "betas": b,
            "timestep_map": tmap,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "alphas_cumprod_next": ac_next,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.append(floor, post_var[1:])),
            "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            "log_betas": np.log(b),
        }
        for name, value in arrays.items():
            tensor = torch.as_tensor(value, dtype=torch.int64) if name == "timestep_map" else _f64(value)
            object.__setattr__(self, name, tensor)
        object.__setattr__(self, "original_num_steps", orig)

    @property
    def num_timesteps(self) -> int:
        """Number of steps of this (respaced) process."""
        return int(self.betas.shape[0])

    @property
    def is_respaced(self) -> bool:
        """True when this schedule keeps only some of the original steps."""
        return self.num_timesteps != self.original_num_steps

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map respaced indices ``t`` (int tensor) to the float timesteps the network is conditioned on.

        Same as the official ``_WrappedModel`` with ``rescale_timesteps=True``: the original index
        times ``1000 / original_num_steps`` (so always on the 0..999 scale the prior was trained on).
        """
        mapped = self.timestep_map.to(t.device)[t.long()]
        return mapped.to(torch.float32) * (1000.0 / self.original_num_steps)

    def __repr__(self) -> str:
        kind = f"respaced from {self.original_num_steps}" if self.is_respaced else "full"
        return f"Schedule(num_timesteps={self.num_timesteps}, {kind})"


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``arr[t]`` on ``like``'s device, shaped (B, 1, ...) to broadcast over ``like``.

    Mirrors the official ``_extract_into_tensor`` (float64 array, gathered values cast with
    ``.float()``): the result is float32, or float64 when ``like`` is float64. Half-precision inputs
    therefore get float32 coefficients, and the maths runs in float32 as in the official code.
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    out = arr.to(device=like.device, dtype=dtype)[t.to(like.device).long()]
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))
