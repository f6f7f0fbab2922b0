"""Early stopping on a held-out score of the EMA model, checkpointed with the trainer for exact resume.

:class:`EarlyStopping` is handed to :func:`~piti_core.train.session.run_stage` as its ``monitor``.
Every ``every`` steps (and at step 0 of a fresh stage, and at its last step) it swaps the EMA weights
into the model, asks ``score(model, trainer)`` for ``{"heldout_loss": ..., ...}`` and keeps the EMA
weights of the lowest loss seen. After ``patience`` evaluations without a decrease of more than
``min_delta`` (relative: a fraction of the best loss) it says stop; the stage then ends with the best
weights, not the last ones.

It is registered in the trainer's ``aux`` objects, so its counters and best weights live in every
trainer checkpoint: a stopped and resumed run makes the same decisions as an uninterrupted one.
:func:`heldout_diffusion_loss` is the score the few-shot recipe uses (docs/fewshot.md).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

Score = Callable[[torch.nn.Module, object], dict]


class EarlyStopping:
    name = "early_stop"  # its key among the trainer's aux objects (and in checkpoints)

    def __init__(self, score: Score, *, every: int, patience: int, min_delta: float = 0.0, key: str = "heldout_loss"):
        self.score, self.every, self.patience, self.min_delta, self.key = score, every, patience, min_delta, key
        self.best_loss: float | None = None
        self.best_step = -1
        self.bad_evals = 0
        self.evals = 0
        self.last_step = -1
        self.stopped = False
        self.best: dict[str, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0 and step != self.last_step

    @torch.no_grad()
    def evaluate(self, trainer, step: int) -> dict:
        """Score the EMA weights at ``step``; returns the metrics row (without stage/step)."""
        with ema_weights(trainer) as model:
            row = {k: float(v) for k, v in self.score(model, trainer).items()}
        loss = row[self.key]
        self.evals += 1
        self.last_step = step
        if self.best_loss is None or loss < self.best_loss * (1.0 - self.min_delta):
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in trainer.ema.shadow.items()}
        else:
            self.bad_evals += 1
            self.stopped = self.bad_evals >= self.patience
        row.update({f"best_{self.key}": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals})
        if self.stopped:
            row["early_stop"] = True
        return row

    def best_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (the model's EMA state dict) with the trained tensors of the best evaluation."""
        if not self.best:
            return state
        out = dict(state)
        for k, v in self.best.items():
            out[k] = v.to(state[k].device, state[k].dtype)
        return out

    # ----------------------------------------------------------------- checkpointed with the trainer
    def state_dict(self) -> dict:
        out: dict = {"best_loss": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals,
                     "evals": self.evals, "last_step": self.last_step, "stopped": self.stopped}
        out.update({f"best.{k}": v for k, v in self.best.items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        if "evals" not in state:  # a checkpoint written without early stopping
            return
        self.best_loss = None if state["best_loss"] is None else float(state["best_loss"])
        self.best_step, self.bad_evals = int(state["best_step"]), int(state["bad_evals"])
        self.evals, self.last_step, self.stopped = int(state["evals"]), int(state["last_step"]), bool(state["stopped"])
        self.best = {k[5:]: v.detach().cpu().clone() for k, v in state.items() if k.startswith("best.")}


@contextlib.contextmanager
def ema_weights(trainer):
    """The trainer's model in eval mode with its EMA weights in place of the trained ones (restored after)."""
    saved = {k: p.detach().clone() for k, p in trainer.named.items()}
    was_training = trainer.model.training
    with torch.no_grad():
        for k, p in trainer.named.items():
            p.copy_(trainer.ema.shadow[k].to(p.dtype))
    trainer.model.eval()
    try:
        yield trainer.model
    finally:
        with torch.no_grad():
            for k, p in trainer.named.items():
                p.copy_(saved[k])
        trainer.model.train(was_training)


def fixed_draws(n: int, shape: tuple[int, ...], num_timesteps: int, timesteps: int, seed: int):
    """``timesteps`` evenly spaced t for each of ``n`` items, and their noise from ``seed`` (CPU, so the
    draws are the same on every device): t (n·k,), noise (n·k, *shape), item index (n·k,)."""
    k = timesteps
    t = ((torch.arange(k, dtype=torch.float64) + 0.5) * num_timesteps / k).long().clamp(0, num_timesteps - 1)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n * k, *shape), generator=gen)
    return t.repeat(n), noise, torch.arange(n).repeat_interleave(k)


@torch.no_grad()
def heldout_diffusion_loss(model, image: torch.Tensor, cond: torch.Tensor, *, schedule, timesteps: int, seed: int,
                           batch_size: int, low_res: torch.Tensor | None = None, autocast=None) -> dict[str, float]:
    """Mean hybrid diffusion loss (and its eps-MSE part) of ``model`` on fixed pairs, timesteps and noise.

    ``image`` (N, 3, s, s) in [-1, 1] with ``cond`` (N, ...) and, for an upsampler, ``low_res``; every
    pair is noised at the same ``timesteps`` evenly spaced t with noise drawn from ``seed``, so two
    calls on the same weights give the same number.
    """
    from piti_core.diffusion import training_losses

    dev = image.device
    t_all, noise_all, item = fixed_draws(image.shape[0], tuple(image.shape[1:]), schedule.num_timesteps, timesteps,
                                         seed)
    total = {"loss": 0.0, "mse": 0.0}
    for start in range(0, t_all.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        idx = item[sl].to(dev)
        x0, c = image[idx], cond[idx]
        lr = low_res[idx] if low_res is not None else None

        def model_fn(x_t, tt, c=c, lr=lr):
            return model(x_t, tt, c, lr)

        with autocast() if autocast is not None else contextlib.nullcontext():
            terms = training_losses(model_fn, x0, t_all[sl].to(dev), schedule, noise=noise_all[sl].to(dev, x0.dtype))
        total["loss"] += float(terms["loss"].float().sum())
        total["mse"] += float(terms["mse"].float().sum())
    n = t_all.shape[0]
    return {"heldout_loss": total["loss"] / n, "heldout_mse": total["mse"] / n}
