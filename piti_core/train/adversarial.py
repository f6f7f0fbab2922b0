"""Adversarial loss of the upsampler stage: a discriminator with its own Adam, WGAN-GP or hinge.

Official PITI (``pretrained_diffusion/adv.py``, spec §6): ``AdversarialLoss(gan_type='WGAN_GP',
gan_k=1, lr_dis=1e-5)`` on a PatchGAN that judges x̂0 alone. Per generator step the trainer calls

1. ``d_step(x0_hat.detach(), x0)`` — one discriminator update, then
2. ``g_loss(x0_hat)`` — the per-sample generator term, judged by the *updated* discriminator
   (EDSR/PITI order), weighted by ``train.adv_weight`` (0.01) in the total loss.

Losses (patch maps averaged over patches and batch):

- ``wgan-gp``: D loss ``mean D(fake) − mean D(real) + 10·mean_b (‖∇_x̂ D(x̂_b)‖₂ − 1)²`` with
  ``x̂ = (1−ε)·fake + ε·real``, ``ε ~ U(0,1)`` per sample (ε from the global torch RNG or
  ``generator``); G loss ``−mean_patches D(fake)``.
- ``hinge``: D loss ``mean relu(1 − D(real)) + mean relu(1 + D(fake))``; G loss as above.

Adam uses torch's default betas (0.9, 0.999) like the official code (the WGAN-GP paper uses
(0, 0.9); pass ``betas`` to change). The D step runs in fp32 (autocast off). Under
``torch.distributed`` the D gradients are averaged over ranks so every rank keeps the same D.

``state_dict()`` is flat: tensors (``disc.*`` weights, ``opt.state.*`` Adam moments) plus
JSON-able values (``opt_meta``, ``kind``, ``d_steps``) — no pickle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from piti_core.errors import CheckpointError, ConfigError

KINDS = ("wgan-gp", "hinge")


class AdversarialLoss:
    def __init__(self, discriminator: nn.Module, kind: str = "wgan-gp", lr: float = 1e-5, gp_weight: float = 10.0,
                 betas: tuple[float, float] = (0.9, 0.999)):
        if kind not in KINDS:
            raise ConfigError(f"unknown GAN loss '{kind}' (train.gan); choose one of {', '.join(KINDS)}")
        self.disc, self.kind, self.gp_weight = discriminator, kind, float(gp_weight)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=tuple(betas))
        self.d_steps = 0

    # ------------------------------------------------------------------------------ losses
    def gradient_penalty(self, fake: torch.Tensor, real: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """``gp_weight · mean_b (‖∇D(x̂_b)‖₂ − 1)²`` on random interpolates (differentiable in D)."""
        eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real)
        hat = (fake * (1 - eps) + real * eps).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.disc(hat).sum(), hat, create_graph=True)
        norm = grad.flatten(1).norm(2, dim=1)
        return self.gp_weight * (norm - 1).pow(2).mean()

    def d_step(self, fake: torch.Tensor, real: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """One discriminator update on ``fake`` (detached here too) vs ``real``; returns logged floats."""
        self.disc.train()
        fake, real = fake.detach().float(), real.detach().float()
        self.disc.requires_grad_(True)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=real.device.type, enabled=False):
            d_fake, d_real = self.disc(fake), self.disc(real)
            logs = {"d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}
            if self.kind == "wgan-gp":
                gp = self.gradient_penalty(fake, real, generator)
                loss = d_fake.mean() - d_real.mean() + gp
                logs["gp"] = float(gp.detach())
            else:
                loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            loss.backward()
        _average_grads_across_ranks(self.disc)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.d_steps += 1
        logs["d_loss"] = float(loss.detach())
        return logs

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Per-sample generator loss (B,): ``−D(fake)`` averaged over the patches.

        Gradients flow to ``fake`` only: the discriminator's parameters are excluded from the graph.
        """
        flags = [p.requires_grad for p in self.disc.parameters()]
        self.disc.requires_grad_(False)
        try:
            with torch.autocast(device_type=fake.device.type, enabled=False):
                score = self.disc(fake.float())
        finally:
            for p, f in zip(self.disc.parameters(), flags):
                p.requires_grad_(f)
        return -score.flatten(1).mean(dim=1)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        from piti_core.train.checkpoint import flatten_optimizer

        out: dict = {f"disc.{k}": v.detach().clone() for k, v in self.disc.state_dict().items()}
        tensors, meta = flatten_optimizer(self.opt, "opt")
        out.update(tensors)
        out.update({"opt_meta": meta, "kind": self.kind, "d_steps": self.d_steps})
        return out

    def load_state_dict(self, state: dict) -> None:
        from piti_core.train.checkpoint import unflatten_optimizer

        if state.get("kind", self.kind) != self.kind:
            raise CheckpointError(f"the checkpoint's discriminator was trained with train.gan='{state['kind']}', "
                                  f"not '{self.kind}'; set train.gan accordingly")
        disc = {k[5:]: v for k, v in state.items() if k.startswith("disc.")}
        try:
            self.disc.load_state_dict(disc, strict=True)
        except RuntimeError as exc:
            raise CheckpointError("the checkpoint's discriminator does not match train.disc_channels: "
                                  + str(exc).splitlines()[0]) from None
        meta = state["opt_meta"]
        groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
        tensors = {k: v for k, v in state.items() if k.startswith("opt.state.")}
        unflatten_optimizer(self.opt, tensors, dict(meta, param_groups=groups), "opt")
        self.d_steps = int(state.get("d_steps", 0))


def _average_grads_across_ranks(module: nn.Module) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
