"""Bytes a training step saves for backward, counted on fake tensors: no compute, no real memory.

The stage's model is built with :class:`torch._subclasses.fake_tensor.FakeTensorMode` (tensors that
carry shape, dtype and device but no data, on top of the meta device), then one forward pass and the
diffusion loss run on a fake batch inside ``torch.autograd.graph.saved_tensors_hooks``. Every tensor
autograd keeps for backward goes through the pack hook; its storage is counted once (views and
repeated saves of one tensor share a storage), parameters and buffers excluded (they are counted as
weights). Fake tensors of the target device type, not plain meta tensors, because what is saved
depends on it: autocast casts only tensors of its device (bf16 autocast saves bf16 activations and
bf16 copies of the trained weights), and ``scaled_dot_product_attention`` picks a fused kernel that
saves q, k, v, the output and a log-sum-exp on CPU and CUDA, while the meta device falls back to the
math kernel, which saves the whole attention matrix.

The upsampler stage adds the generator's perceptual and adversarial terms to the pass, and counts
apart what the discriminator's own update (with its gradient penalty) saves between the forward and
the backward of the generator.

Checkpointing (``model.checkpointing`` / ``upsampler.checkpointing``: each UNet block and each encoder
transformer block recomputed in backward) is composed from the same pass: forward hooks note, per
block, its inputs and the storages first saved inside it. With checkpointing only what is saved
outside the blocks and the blocks' inputs stay alive, plus, during backward, one block's own saved
tensors while it is recomputed (the largest block bounds it).
"""

from __future__ import annotations

import attrs
import torch
from attrs import frozen


@frozen
class ActivationCount:
    """Saved-for-backward bytes of one micro-batch (a forward pass and the loss)."""

    plain: int  # without checkpointing
    checkpointed: int  # with per-block checkpointing
    batch_size: int
    plain_per_sample: int  # the part of ``plain`` that scales with the batch (all but weight copies), per sample
    checkpointed_per_sample: int
    largest: int  # the largest single saved tensor (bytes)
    discriminator_step: int = 0  # upsampler stage: what the discriminator's own update saves (per batch)

    def at(self, batch_size: int, checkpointing: bool) -> int:
        """Bytes at another batch size, scaling the batch-dependent part linearly."""
        total, per = (self.checkpointed, self.checkpointed_per_sample) if checkpointing else (
            self.plain, self.plain_per_sample)
        return max(0, total - self.batch_size * per) + batch_size * per


class _Recorder:
    """Pack hook + block hooks: which storages are saved, and inside which checkpointable block."""

    def __init__(self, batch_size: int, exclude: set[int], param_shapes: frozenset = frozenset()):
        self.batch_size, self.exclude, self.param_shapes = batch_size, exclude, param_shapes
        self.saved: dict[int, tuple[int, bool]] = {}  # storage id -> (bytes, scales with the batch)
        self.keep: list[torch.Tensor] = []  # keeps the storages alive, so ids stay unique
        self.blocks: list[dict] = []
        self.stack: list[dict] = []

    def _batched(self, t: torch.Tensor) -> bool:
        """Whether ``t`` scales with the batch: anything but a copy of a weight (autocast's casts), told
        apart by having a parameter's shape. Not by a batch-sized dimension: autograd often saves
        flattened views, e.g. (B·L, C) inputs of linear layers."""
        return tuple(t.shape) not in self.param_shapes

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.exclude and key not in self.saved:
            self.saved[key] = (storage.nbytes(), self._batched(t))
            self.keep.append(t)
            for block in self.stack:
                block["inside"].add(key)
        return t

    def pre(self, module, args):
        inputs = {}
        for a in args:
            if torch.is_tensor(a):
                s = a.untyped_storage()
                inputs[s._cdata] = (s.nbytes(), self._batched(a))
                self.keep.append(a)
        block = {"inputs": inputs, "inside": set()}
        self.blocks.append(block)
        self.stack.append(block)

    def post(self, module, args, output):
        self.stack.pop()

    def total(self) -> int:
        return sum(n for n, _ in self.saved.values())

    def compose(self) -> ActivationCount:
        def total(items):
            items = list(items)
            return sum(n for n, _ in items), sum(n for n, per in items if per)

        plain, plain_per = total(self.saved.values())
        inside = set().union(*(b["inside"] for b in self.blocks)) if self.blocks else set()
        kept = {k: v for k, v in self.saved.items() if k not in inside}
        for b in self.blocks:
            kept.update({k: v for k, v in b["inputs"].items() if k not in self.exclude})
        kept_bytes, kept_per = total(kept.values())
        recompute = (0, 0)
        for b in self.blocks:
            own = total(self.saved[k] for k in b["inside"] if k not in b["inputs"])
            recompute = max(recompute, own)
        largest = max((n for n, _ in self.saved.values()), default=0)
        b = self.batch_size
        return ActivationCount(plain=plain, checkpointed=kept_bytes + recompute[0], batch_size=b,
                               plain_per_sample=plain_per // b, checkpointed_per_sample=(kept_per + recompute[1]) // b,
                               largest=largest)


def _checkpoint_units(model: torch.nn.Module) -> tuple[list, list]:
    """The modules ``checkpointing`` wraps (UNet blocks, transformer blocks) and their owners."""
    from piti_core.models.transformer import Transformer
    from piti_core.models.unet import UNet

    units, owners = [], []
    for m in model.modules():
        if isinstance(m, UNet):
            units += [*m.input_blocks, m.middle_block, *m.output_blocks]
            owners.append(m)
        elif isinstance(m, Transformer):
            units += list(m.resblocks)
            owners.append(m)
    return units, owners


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def build_fake(builder, mode, device_type: str) -> torch.nn.Module:
    """``builder()`` on fake tensors of ``device_type`` (parameters hold no memory)."""
    with mode, torch.device(device_type):
        return builder()


@frozen
class Adversarial:
    """The upsampler stage's discriminator and perceptual loss, built with :func:`build_fake`."""

    disc: torch.nn.Module
    perceptual: torch.nn.Module | None  # a PerceptualLoss, None when train.perceptual resolves to none
    gan: str  # wgan-gp | hinge


def _generator_terms(adv: Adversarial, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Perceptual + adversarial terms of the generator loss (``DiffusionObjective``; D frozen)."""
    adv.disc.requires_grad_(False)
    out = -adv.disc(x0_hat).flatten(1).mean(dim=1)
    return out + adv.perceptual(x0_hat, x0) if adv.perceptual is not None else out


def _discriminator_step(adv: Adversarial, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The graph of ``AdversarialLoss.d_step`` (its gradient penalty included), without the update."""
    adv.disc.requires_grad_(True)
    loss = adv.disc(fake).mean() - adv.disc(real).mean()
    if adv.gan == "wgan-gp":
        hat = (0.5 * fake + 0.5 * real).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(adv.disc(hat).sum(), hat, create_graph=True)
        loss = loss + (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
    return loss


def count_activations(model: torch.nn.Module, mode, *, batch_size: int, image_size: int, cond_shape: tuple,
                      super_res: int, schedule, dtype: torch.dtype, device_type: str,
                      cond_dtype: torch.dtype = torch.float32, frozen: tuple = (),
                      adversarial: Adversarial | None = None) -> ActivationCount:
    """Saved bytes of ``model`` (built by :func:`build_fake` under ``mode``) for one training micro-batch.

    ``model``'s ``requires_grad`` flags must already be those of the stage (a frozen decoder saves
    less); ``frozen`` modules run in eval mode, as the Trainer runs them (no dropout masks). The
    forward pass runs with checkpointing off; the checkpointed count is composed. With
    ``adversarial`` the generator's perceptual and adversarial terms are part of the pass, and the
    discriminator's own step (run between forward and backward) is counted apart.
    """
    from piti_core.diffusion import training_losses
    from piti_core.precision import autocast

    modules = [model] + ([adversarial.disc, adversarial.perceptual] if adversarial is not None else [])
    exclude = {t.untyped_storage()._cdata for m in modules if m is not None
               for t in (*m.parameters(), *m.buffers())}
    shapes = frozenset(tuple(p.shape) for m in modules if m is not None for p in m.parameters())
    rec = _Recorder(batch_size, exclude, shapes)
    d_rec = _Recorder(batch_size, exclude, shapes)
    units, owners = _checkpoint_units(model)
    flags = [o.checkpointing for o in owners]
    handles = [u.register_forward_pre_hook(rec.pre) for u in units]
    handles += [u.register_forward_hook(rec.post) for u in units]
    model.train()
    for m in frozen:
        m.eval()
    try:
        for o in owners:
            o.checkpointing = False
        with mode, torch.device(device_type):
            b = batch_size
            x0 = torch.empty(b, 3, image_size, image_size)
            noise = torch.empty_like(x0)
            cond = torch.empty(b, *cond_shape, dtype=cond_dtype)
            low = torch.empty(b, 3, super_res, super_res) if super_res else None
            t = torch.zeros(b, dtype=torch.long)
            with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
                with autocast(torch.device(device_type), dtype):
                    terms = training_losses(lambda x, tt: model(x, tt, cond, low), x0, t, schedule, noise=noise)
                loss = terms["loss"].float()
                if adversarial is not None:
                    x0_hat = terms["pred_xstart"].float()
                    loss = loss + _generator_terms(adversarial, x0_hat, x0)
                loss.mean()
            if adversarial is not None:
                d_rec.exclude = exclude | set(rec.saved)  # x0_hat and x0 are already counted
                with torch.autograd.graph.saved_tensors_hooks(d_rec.pack, lambda t: t):
                    _discriminator_step(adversarial, x0_hat.detach(), x0)
    finally:
        for h in handles:
            h.remove()
        for o, f in zip(owners, flags):
            o.checkpointing = f
    return attrs.evolve(rec.compose(), discriminator_step=d_rec.total())
