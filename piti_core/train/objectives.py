"""The per-step loss of a stage: hybrid diffusion loss, condition dropout, and for the upsampler the
degraded low-res input plus perceptual and adversarial terms on the predicted x0.

Random draws that define the *data* of a step (timesteps, noise, dropout mask) are made for the
global batch from a rank-independent seed and then sliced per rank, so N processes with batch B give
the same gradients as one process with batch N·B.
"""

from __future__ import annotations

from typing import Any

import torch

from piti_core.diffusion import build_schedule, get_timestep_sampler, training_losses
from piti_core.train.degrade import degrade
from piti_core.train.loop import step_seed
from piti_core.train.recipe import Stage


class DiffusionObjective:
    """``objective(batch, trainer) -> (loss, logs)`` for one stage."""

    def __init__(self, stage: Stage, cfg, *, null_condition, degrade=None, perceptual=None, adversarial=None,
                 world: int = 1):
        upsampler = stage.model in ("upsampler", "text_upsampler")
        schedule_name = cfg.diffusion.upsampler_schedule if upsampler else cfg.diffusion.schedule
        self.stage, self.cfg, self.world = stage, cfg, world
        self.schedule = build_schedule(schedule_name, cfg.diffusion.steps)
        self.timesteps = get_timestep_sampler(stage.timestep_sampler, cfg.diffusion.steps)
        self.null_condition = null_condition
        self.upsampler = upsampler
        self.low_res = (cfg.upsampler if upsampler else cfg.model).super_res
        self.degrade, self.perceptual, self.adversarial = degrade, perceptual, adversarial

    def aux(self) -> dict[str, Any]:
        out = {"timesteps": self.timesteps}
        if self.adversarial is not None:
            out["adversarial"] = self.adversarial
        return out

    def _update_timesteps(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Every rank records the losses of the whole global batch, so their samplers stay identical."""
        if self.world > 1:
            t, losses = _gather(t, self.world), _gather(losses, self.world)
        self.timesteps.update(t.cpu(), losses.cpu())

    def _global_draws(self, trainer, batch_size: int, x0: torch.Tensor):
        """t, importance weights, noise and the dropout mask for this rank's slice of the global batch."""
        total = batch_size * self.world
        seed = step_seed(trainer.tcfg.seed + 7919, trainer.stage_index, trainer.step, 0)
        gen = torch.Generator().manual_seed(seed)
        t, w = self.timesteps.sample(total, generator=gen)
        noise = torch.randn((total, *x0.shape[1:]), generator=gen)
        drop = torch.rand(total, generator=gen) < self.stage.uncond_p
        sl = slice(trainer.rank * batch_size, (trainer.rank + 1) * batch_size)
        dev = x0.device
        return t[sl].to(dev), w[sl].to(dev), noise[sl].to(dev, x0.dtype), drop[sl].to(dev)

    def __call__(self, batch: dict, trainer) -> tuple[torch.Tensor, dict[str, float]]:
        dev = trainer.device
        x0 = batch["image"].to(dev, non_blocking=True).float()
        cond = batch["cond"].to(dev, non_blocking=True)
        b = x0.shape[0]
        t, weights, noise, drop = self._global_draws(trainer, b, x0)
        if drop.any():
            null = self.null_condition(cond)
            mask = drop.view(-1, *([1] * (cond.dim() - 1)))
            cond = torch.where(mask, null, cond)
        low_res = None
        if self.upsampler:
            with torch.no_grad():
                low_res = self.degrade(x0) if self.degrade is not None else degrade(x0, self.low_res, "bicubic")
        net = trainer.net

        def model_fn(x_t, tt):
            return net(x_t, tt, cond, low_res)

        with trainer.autocast():
            terms = training_losses(model_fn, x0, t, self.schedule, noise=noise)
        per_sample = terms["loss"].float()
        logs = {"mse": float(terms["mse"].detach().mean()), "vb": float(terms["vb"].detach().mean())}
        if self.adversarial is not None and trainer.step >= trainer.tcfg.adv_warmup:
            x0_hat = terms["pred_xstart"].float()
            if self.perceptual is not None:
                perc = self.perceptual(x0_hat, x0)
                per_sample = per_sample + trainer.tcfg.perceptual_weight * perc
                logs["perceptual"] = float(perc.detach().mean())
            logs.update({f"d_{k}": v for k, v in self.adversarial.d_step(x0_hat.detach(), x0).items()})
            adv = self.adversarial.g_loss(x0_hat)
            per_sample = per_sample + trainer.tcfg.adv_weight * adv
            logs["adv"] = float(adv.detach().mean())
        self._update_timesteps(t, terms["loss"].detach().float())
        loss = (per_sample * weights).mean()
        return loss, logs


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)

