"""Exponential moving average of parameters (fp32 shadow copies)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow = rate·shadow + (1−rate)·param`` after every optimizer step.

    With ``warmup`` the rate is ``min(rate, (1 + n) / (10 + n))`` after ``n`` updates, so short runs
    (CPU, few-shot) do not average mostly over the initial weights; the official recipe uses a plain
    0.9999 over 10⁵ steps, where the warm-up makes no difference.
    """

    def __init__(self, params: dict[str, nn.Parameter], rate: float, warmup: bool = True):
        self.rate, self.warmup, self.updates = float(rate), warmup, 0
        self.shadow = {k: p.detach().clone().float() for k, p in params.items()}

    def current_rate(self) -> float:
        if not self.warmup:
            return self.rate
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter]) -> None:
        rate = self.current_rate()
        shadows = [self.shadow[k] for k in params]
        values = [p.detach().float() for p in params.values()]
        torch._foreach_lerp_(shadows, values, 1.0 - rate)  # one multi-tensor pass, not one kernel per tensor
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        self.updates = int(updates)

    def averaged_state(self, model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the averaged tensors where this EMA tracks them."""
        out = {}
        for k, v in model.state_dict().items():
            key = prefix + k
            out[k] = self.shadow[key].to(v.dtype) if key in self.shadow else v
        return out
