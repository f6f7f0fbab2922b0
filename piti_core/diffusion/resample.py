"""Timestep samplers for training (official ``resample.py``).

* ``uniform``: t ~ U{0..T−1}, importance weights 1 (the upsampler).
* ``loss-second-moment``: keeps the last 10 losses per t; until every t has 10 of them it samples
  uniformly, then samples with p_t ∝ √E[L_t²], mixed with 0.001 of the uniform distribution, and
  returns importance weights 1/(T·p_t) so the weighted loss stays an unbiased estimate (base stages).

Sampling is deterministic under a ``torch.Generator``. State (``state_dict``/``load_state_dict``)
is plain tensors (safetensors-compatible, no pickle), so a resumed run draws exactly the same
timesteps. In multi-process training, gather every rank's (t, loss) before :meth:`update` so all
ranks keep identical histories (the official code all-gathers).
"""

from __future__ import annotations

import torch

from piti_core.errors import CheckpointError, ConfigError

__all__ = ["UniformSampler", "LossSecondMomentSampler", "TIMESTEP_SAMPLERS", "get_timestep_sampler"]


class UniformSampler:
    """t ~ U{0..T−1}; stateless."""

    name = "uniform"

    def __init__(self, num_timesteps: int):
        if int(num_timesteps) < 1:
            raise ConfigError(f"timestep sampler needs num_timesteps >= 1, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 sampling weights over 0..T−1."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` timesteps; returns ``(t int64, importance weights float32)`` on ``device``.

        ``generator`` may live on any device; the draw happens on the generator's device.
        """
        w = self.weights()
        p = w / w.sum()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.multinomial(p.to(gen_device), batch_size, replacement=True, generator=generator).cpu()
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses (no-op for the uniform sampler)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Sampler state as plain tensors (empty for the uniform sampler)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` output."""


class LossSecondMomentSampler(UniformSampler):
    """Importance sampling of t by the root of the second moment of its recent losses."""

    name = "loss-second-moment"

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ConfigError("loss-second-moment sampler needs history_per_term >= 1 and uniform_prob in [0, 1]")
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self._history = torch.zeros(self.num_timesteps, self.history_per_term, dtype=torch.float64)
        self._counts = torch.zeros(self.num_timesteps, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        """True once every timestep has a full loss history."""
        return bool((self._counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        """Uniform until warm; then √E[L²] normalised, mixed with ``uniform_prob`` of uniform."""
        if not self.warmed_up:
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = torch.sqrt((self._history**2).mean(dim=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each ``losses[k]`` to the history of timestep ``t[k]`` (oldest shifted out when full)."""
        ts = torch.as_tensor(t).detach().reshape(-1).cpu().tolist()
        ls = torch.as_tensor(losses).detach().reshape(-1).to("cpu", torch.float64).tolist()
        if len(ts) != len(ls):
            raise ValueError(f"update got {len(ts)} timesteps and {len(ls)} losses")
        for ti, loss in zip(ts, ls):
            n = int(self._counts[ti])
            if n == self.history_per_term:
                self._history[ti, :-1] = self._history[ti, 1:].clone()
                self._history[ti, -1] = loss
            else:
                self._history[ti, n] = loss
                self._counts[ti] = n + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"history": (T, H) float64, "counts": (T,) int64}`` (copies)."""
        return {"history": self._history.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`; the shapes must match this sampler's T and history length."""
        history, counts = state.get("history"), state.get("counts")
        if history is None or counts is None:
            raise CheckpointError(
                "timestep sampler state lacks 'history'/'counts': not a loss-second-moment sampler's state"
            )
        if tuple(history.shape) != tuple(self._history.shape) or tuple(counts.shape) != tuple(self._counts.shape):
            raise CheckpointError(
                f"timestep sampler state has history {tuple(history.shape)}, expected {tuple(self._history.shape)}: "
                "diffusion.steps differs from the checkpoint's"
            )
        self._history = history.detach().to("cpu", torch.float64).clone()
        self._counts = counts.detach().to("cpu", torch.int64).clone()


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler}


def get_timestep_sampler(name: str, num_timesteps: int) -> UniformSampler:
    """A new timestep sampler by name (``"uniform"`` or ``"loss-second-moment"``)."""
    if name not in TIMESTEP_SAMPLERS:
        raise ConfigError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    return TIMESTEP_SAMPLERS[name](num_timesteps)
