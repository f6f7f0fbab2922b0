"""One training stage: deterministic batches, AdamW, EMA, accumulation, autocast, clipping, NaN guard.

Resume is exact because every random draw of step ``s`` (data order, augmentation, noise, timesteps,
dropout, condition dropout) is a function of ``(seed, stage, s, rank)``: the global torch RNG is
re-seeded at the start of each step and the data order is a per-epoch permutation of the seed.
Stopping after N steps and resuming gives the same weights as running N + M steps in one go.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from piti_core.errors import DataError, TrainingError
from piti_core.host_memory import keep_freed_memory
from piti_core.precision import autocast
from piti_core.train.checkpoint import flatten_optimizer, rng_state, unflatten_optimizer
from piti_core.train.ema import EMA


def step_seed(seed: int, stage: int, step: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for one step (splitmix64 of the inputs)."""
    z = (seed * 0x9E3779B97F4A7C15 + stage * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB + rank) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def collate(samples: list[Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return out


class _Seeded(torch.utils.data.Dataset):
    """Item ``(index, seed)``: seeds the torch RNG, then reads ``dataset[index]``.

    Augmentation inside the data set is then a function of ``(seed, epoch, index)`` only, the same in
    the main process and in any DataLoader worker, so resume stays exact with workers too.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed)
        return self.dataset[index]


class _Batches(torch.utils.data.Sampler):
    def __init__(self, stream: "BatchStream", start: int):
        self.stream, self.start = stream, start

    def __iter__(self):
        i = self.start
        while True:
            yield self.stream.items(i)
            i += 1


class BatchStream:
    """Batch ``i`` of a map-style data set as a pure function of ``(seed, i)``.

    Each epoch is a fresh permutation drawn from ``seed + epoch``; with ``world > 1`` rank ``r``
    takes its own slice of every global batch (DDP sharding). With ``num_workers > 0`` batches are
    read ahead by DataLoader workers.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, num_workers: int = 0):
        n = len(dataset)
        if n == 0:
            raise DataError("the training set is empty")
        if batch_size * world > n:
            raise DataError(f"batch size {batch_size}×{world} is larger than the training set ({n} samples); "
                            "lower train.batch_size or add data")
        self.dataset, self.batch_size, self.seed, self.rank, self.world = dataset, batch_size, seed, rank, world
        self.per_epoch = n // (batch_size * world)
        self.num_workers = num_workers
        self._perm_epoch, self._perm = -1, None
        self._iter, self._next = None, None

    def position(self, i: int) -> dict[str, int]:
        return {"epoch": i // self.per_epoch, "batch_in_epoch": i % self.per_epoch}

    def indices(self, i: int) -> list[int]:
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.dataset), generator=gen), epoch
        start = (j * self.world + self.rank) * self.batch_size
        return self._perm[start:start + self.batch_size].tolist()

    def items(self, i: int) -> list[tuple[int, int]]:
        epoch = i // self.per_epoch
        return [(k, step_seed(self.seed, epoch, k, 0)) for k in self.indices(i)]

    def batch(self, i: int) -> dict[str, Any]:
        if self.num_workers <= 0:
            seeded = _Seeded(self.dataset)
            return collate([seeded[item] for item in self.items(i)])
        if self._iter is None or self._next != i:
            loader = torch.utils.data.DataLoader(_Seeded(self.dataset), batch_sampler=_Batches(self, i),
                                                 num_workers=self.num_workers, collate_fn=collate,
                                                 persistent_workers=False, prefetch_factor=4)
            self._iter = iter(loader)
        self._next = i + 1
        return next(self._iter)


DOT_NORM_MIN_VALUES = 1 << 16  # CPU gradients at least this large get their squared norm from a BLAS dot


@torch.no_grad()
def total_grad_norm(grads: list[torch.Tensor]) -> float:
    """The total 2-norm of ``grads``.

    On the CPU, fp32 contiguous gradients of at least :data:`DOT_NORM_MIN_VALUES` values get their
    squared norm from one BLAS dot each, the rest from ``_foreach_norm``: 65 against 97 ms for
    ``_foreach_norm`` alone over the glide base's 708 gradients; 2.9 against 2.5 ms over the tiny
    preset's 296, where few tensors are large (docs/scripts/clip_norm_ab.py). Both ways
    overflow to inf for norms above ~1.8e19 (fp32 squares) and propagate inf and NaN.
    """
    if not grads:
        return 0.0
    squares, rest = [], []
    for g in grads:
        if (g.device.type == "cpu" and g.dtype == torch.float32 and g.numel() >= DOT_NORM_MIN_VALUES
                and g.is_contiguous()):
            squares.append(torch.dot(g.view(-1), g.view(-1)))
        else:
            rest.append(g)
    if rest:  # on CUDA all of them: one fused multi-tensor kernel
        squares.append(torch.stack([n.float() for n in torch._foreach_norm(rest)]).square().sum())
    return float(torch.stack(squares).sum().sqrt())


def _folds_grad_scale(opt: torch.optim.Optimizer, scaler) -> bool:
    """Whether ``opt.step()`` can apply a clipping factor itself: the fused Adam/AdamW kernels divide
    each gradient by ``opt.grad_scale`` as they read it (the attribute GradScaler sets for them), so no
    separate pass over the gradients is needed. Not with an active GradScaler, which sets it itself."""
    fused = isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and bool(opt.defaults.get("fused"))
    return fused and not scaler.is_enabled()


@torch.no_grad()
def clip_grad_norm(params, max_norm: float, fold_into: torch.optim.Optimizer | None = None) -> float:
    """``torch.nn.utils.clip_grad_norm_`` that touches the gradients only when they are clipped.

    torch always multiplies every gradient by ``min(1, max_norm / norm)`` (to avoid a device sync); on
    a 338M-parameter model that is a full pass over 1.35 GB of gradients per step for a factor of 1.0
    almost every time. Here the norm is one pass (:func:`total_grad_norm`), and the scaling happens only
    when the norm exceeds ``max_norm`` (same result: multiplying by 1.0 is exact). With ``fold_into`` (a
    fused Adam/AdamW about to step, see :func:`_folds_grad_scale`) the factor is handed to its kernel as
    ``grad_scale`` instead of scaling the gradients here: 225 against 287 ms for the scaling and the
    step of the glide base (docs/scripts/clip_norm_ab.py); the caller sets ``grad_scale`` back to None
    after the step. Returns the total norm.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = total_grad_norm(grads)
    if math.isfinite(total) and total > max_norm:
        coef = max_norm / (total + 1e-6)
        if fold_into is not None:
            fold_into.grad_scale = torch.tensor(1.0 / coef, dtype=torch.float32, device=grads[0].device)
        else:
            torch._foreach_mul_(grads, coef)
    return total


def _adamw_impl(device: torch.device) -> dict[str, bool]:
    """AdamW's fused kernel (one pass over each tensor) on CPU and CUDA, else the multi-tensor one."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


LossFn = Callable[[dict, "Trainer"], tuple[torch.Tensor, dict[str, float]]]


class Trainer:
    """Runs the optimisation steps of one stage; the stage supplies ``loss_fn(batch, trainer)``.

    ``groups`` are ``(name, params, lr)``: only these parameters get gradients, optimizer state and
    an EMA. ``aux`` objects (timestep sampler, discriminator ...) expose
    ``state_dict()/load_state_dict()`` and are checkpointed too.
    """

    def __init__(self, *, model: nn.Module, groups: list[tuple[str, list[tuple[str, nn.Parameter]], float]],
                 loss_fn: LossFn, stream: BatchStream, tcfg, device: torch.device, dtype: torch.dtype,
                 stage_index: int = 0, aux: Mapping[str, Any] | None = None, rank: int = 0,
                 ddp_model: nn.Module | None = None, max_nonfinite: int = 10, frozen: tuple = ()):
        self.model, self.loss_fn, self.stream, self.tcfg = model, loss_fn, stream, tcfg
        # frozen modules (stage 1's decoder) stay in eval mode, i.e. without dropout, unless
        # train.frozen_dropout asks for the official behaviour (dropout active in the frozen decoder)
        self.frozen = tuple(frozen) if not tcfg.frozen_dropout else ()
        self.net = ddp_model or model  # what the loss function calls (DDP wrapper when distributed)
        self.device, self.dtype, self.stage_index, self.rank = torch.device(device), dtype, stage_index, rank
        if self.device.type == "cpu":  # reuse each step's freed memory (no page faults, piti_core.host_memory)
            keep_freed_memory()
        self.aux = dict(aux or {})
        self.named = {k: p for _, params, _ in groups for k, p in params}
        self.opt = torch.optim.AdamW(
            [{"params": [p for _, p in params], "lr": lr, "name": name} for name, params, lr in groups],
            weight_decay=tcfg.weight_decay, **_adamw_impl(self.device),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.ema = EMA(self.named, tcfg.ema_rate)
        self.step = 0
        self.nonfinite_in_row = 0
        self.skipped = 0
        self.max_nonfinite = max_nonfinite

    def autocast(self):
        return autocast(self.device, self.dtype)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches). Returns the logged values."""
        accum = self.tcfg.grad_accum
        self.opt.zero_grad(set_to_none=True)
        self.model.train()
        for m in self.frozen:
            m.eval()
        logs: dict[str, float] = {}
        losses = []
        for micro in range(accum):
            torch.manual_seed(step_seed(self.tcfg.seed, self.stage_index, self.step * accum + micro, self.rank))
            batch = self.stream.batch(self.step * accum + micro)
            loss, terms = self.loss_fn(batch, self)
            self.scaler.scale(loss / accum).backward()
            losses.append(float(loss.detach()))
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + float(v) / accum
        self.scaler.unscale_(self.opt)
        params = list(self.named.values())
        clip = self.tcfg.grad_clip if self.tcfg.grad_clip > 0 else math.inf
        fold = self.opt if _folds_grad_scale(self.opt, self.scaler) else None
        grad_norm = clip_grad_norm(params, clip, fold_into=fold)
        loss = sum(losses) / accum
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        try:
            if finite or self.scaler.is_enabled():
                self.scaler.step(self.opt)  # with fp16 the scaler itself skips non-finite steps
                self.scaler.update()
                self.ema.update(self.named)
        finally:
            if fold is not None:
                fold.grad_scale = None  # a clipping factor applies to this step only
        if not finite:
            self.skipped += 1
            self.nonfinite_in_row += 1
            self._check_nonfinite_run()
        else:
            self.nonfinite_in_row = 0
        self.step += 1
        logs.update(loss=loss, grad_norm=grad_norm, lr=self.opt.param_groups[0]["lr"], skipped=self.skipped)
        return logs

    FP16_MAX_NONFINITE = 40  # with fp16 the scaler halves its scale per skipped step: 2**-40 of it is none left

    def _check_nonfinite_run(self) -> None:
        """TrainingError once too many steps in a row were NaN/inf. With fp16 the gradient scaler skips such
        steps itself, so there it takes more of them, or weights that became non-finite."""
        n = self.nonfinite_in_row
        if self.scaler.is_enabled():
            broken = n >= self.FP16_MAX_NONFINITE or (n >= self.max_nonfinite and not self._weights_finite())
        else:
            broken = n >= self.max_nonfinite
        if broken:
            fp32 = "" if self.dtype == torch.float32 else ", or resume with --dtype fp32"
            raise TrainingError(f"loss or gradients were NaN/inf for {n} steps in a row (step {self.step}); lower "
                                f"the learning rate (train.*lr) and start a new run{fp32}")

    def check_ended_finite(self, stage: str) -> None:
        """TrainingError if the stage ended on non-finite steps (its weights no longer give a finite loss);
        with fp16, where the scaler skips overflowing steps as a matter of course, if its weights are not finite."""
        if self.nonfinite_in_row and (not self.scaler.is_enabled() or not self._weights_finite()):
            first = self.step - self.nonfinite_in_row + 1
            raise TrainingError(
                f"stage {stage} ended on {self.nonfinite_in_row} NaN/inf steps in a row (from step {first}); its "
                "weights are not usable. Lower the learning rate (train.*lr) and start a new run")

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.named.values())

    # ------------------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_t, opt_meta = flatten_optimizer(self.opt, "optim")
        tensors.update(opt_t)
        rng_t, rng_meta = rng_state()
        tensors.update(rng_t)
        aux_meta = {}
        for name, obj in self.aux.items():
            for k, v in obj.state_dict().items():
                if torch.is_tensor(v):
                    tensors[f"aux.{name}.{k}"] = v
                else:
                    aux_meta[f"{name}.{k}"] = v
        meta = {"step": self.step, "optimizer": opt_meta, "scaler": self.scaler.state_dict(), "rng": rng_meta,
                "ema_updates": self.ema.updates, "skipped": self.skipped, "nonfinite_in_row": self.nonfinite_in_row,
                "aux": aux_meta, "data_position": self.stream.position(self.step * self.tcfg.grad_accum)}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from piti_core.train.checkpoint import set_rng_state

        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, meta["ema_updates"])
        unflatten_optimizer(self.opt, tensors, meta["optimizer"], "optim")
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        set_rng_state(tensors, meta["rng"])
        for name, obj in self.aux.items():
            head = f"aux.{name}."
            state = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
            state.update({k[len(name) + 1:]: v for k, v in meta.get("aux", {}).items() if k.startswith(name + ".")})
            obj.load_state_dict(state)
        self.step, self.skipped = int(meta["step"]), int(meta["skipped"])
        self.nonfinite_in_row = int(meta["nonfinite_in_row"])

    def ema_model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA weights for the trained parameters."""
        names = {id(p): k for k, p in self.named.items()}
        out = {}
        for k, p in self.model.named_parameters():
            out[k] = self.ema.shadow[names[id(p)]].to(p.dtype) if id(p) in names else p.detach()
        for k, b in self.model.named_buffers():
            out[k] = b
        return out
