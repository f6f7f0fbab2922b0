"""Timestep respacing: sample a T-step diffusion with fewer steps (official ``respace.py``).

Spec strings (``sample.steps`` / ``sample.upsampler_steps`` in the config):

* ``"250"``, ``"100"`` … — one section: N steps spread evenly over 0..T−1, first and last included
  (``"250"`` → {0, 4, 8, …, 995, 999}).
* ``"10,10,3,2,2"`` — T is cut into as many equal sections as there are counts and each section is
  spaced evenly with its own count.
* ``"ddimN"`` — the integer stride that gives exactly N steps (``range(0, T, stride)``), as in DDIM.
* ``"fast27"`` — GLIDE's upsampler setting: ``"10,10,3,2,2"`` with T−1 replaced by T−3.
* ``""`` — no respacing (all T steps).

:func:`respace` keeps the chosen steps and recomputes β from ᾱ of the kept steps, so that ᾱ of the
respaced process equals ᾱ of the original at every kept step.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from piti_core.diffusion.schedules import Schedule, get_betas
from piti_core.errors import ConfigError

__all__ = ["space_timesteps", "respace", "build_schedule"]

_SYNTAX = 'use "N" (e.g. "250"), comma-separated section counts ("10,10,3,2,2"), "ddimN" or "fast27"'


def _parse_counts(spec: str) -> list[int]:
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(f"bad timestep respacing {spec!r}: {_SYNTAX}") from None
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ConfigError(f"bad timestep respacing {spec!r}: counts must be >= 0 and not all zero")
    return counts


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> set[int]:
    """The set of original timesteps (0..T−1) kept by respacing spec ``spec``.

    Args:
        num_timesteps: T of the original process.
        spec: a spec string (see module doc), an int N, or a list of section counts.

    Raises:
        ConfigError: malformed spec, or a section asked for more steps than it has.
    """
    T = int(num_timesteps)
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str):
        spec = spec.strip().replace(" ", "")
        if spec == "":
            return set(range(T))
        if spec == "fast27":
            steps = space_timesteps(T, "10,10,3,2,2")
            if T < 3 or T - 1 not in steps:
                raise ConfigError(f'respacing "fast27" needs at least 30 steps, the diffusion has {T}')
            steps.remove(T - 1)
            steps.add(T - 3)  # GLIDE: "help reduce DDIM artifacts from noisiest timesteps"
            return steps
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ConfigError(f"bad timestep respacing {spec!r}: {_SYNTAX}") from None
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == desired:
                    return set(range(0, T, stride))
            raise ConfigError(
                f"respacing {spec!r}: no integer stride gives exactly {desired} of {T} steps; "
                f'try a nearby count or plain "{desired}"'
            )
        counts = _parse_counts(spec)
    else:
        counts = [int(c) for c in spec]
        if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
            raise ConfigError(f"bad timestep respacing {spec!r}: {_SYNTAX}")

    size_per, extra = divmod(T, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(
                f"respacing {spec!r}: section {i} has {size} of the {T} steps but asks for {count}"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))  # Python round (banker's), as the official code
            cur += stride
        start += size
    return set(steps)


def respace(betas, use_timesteps: Iterable[int]) -> Schedule:
    """A :class:`Schedule` keeping only ``use_timesteps`` of the process with betas ``betas``.

    β of the new process is recomputed so that its ᾱ equals the original ᾱ at every kept step:
    ``β'_k = 1 − ᾱ_{t_k} / ᾱ_{t_{k−1}}`` (``ᾱ_{t_{−1}} = 1``). ``timestep_map`` lists the kept steps
    in increasing order.
    """
    b = np.asarray(betas.detach().cpu().numpy() if hasattr(betas, "detach") else betas, dtype=np.float64)
    keep = sorted({int(t) for t in use_timesteps})
    if not keep:
        raise ConfigError("respacing kept no timesteps")
    if keep[0] < 0 or keep[-1] >= len(b):
        raise ConfigError(f"respaced timesteps must lie in 0..{len(b) - 1}, got {keep[0]}..{keep[-1]}")
    alphas_cumprod = np.cumprod(1.0 - b)
    last, new_betas = 1.0, []
    for t in keep:
        new_betas.append(1.0 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return Schedule(np.array(new_betas), timestep_map=np.array(keep), original_num_steps=len(b))


def build_schedule(name: str = "cosine", steps: int = 1000, respacing: str | int | Sequence[int] = "") -> Schedule:
    """The schedule named ``name`` with ``steps`` steps, respaced by ``respacing`` (``""``: none).

    E.g. ``build_schedule("cosine", 1000, "250")`` for base sampling, ``build_schedule("linear", 1000,
    "fast27")`` for the upsampler, ``build_schedule("cosine")`` for training.
    """
    betas = get_betas(name, steps)
    return respace(betas, space_timesteps(steps, respacing))
