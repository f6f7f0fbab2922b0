"""Memory preflight of ``piti train --dry-run``: the peak memory of a training step, per stage, before
anything real is allocated, and the flags that make a run fit when it does not.

Per stage the estimate adds up (bytes; the Trainer's layout, see ``piti_core.train.loop``):

- weights: every parameter and buffer of the stage's model (fp32 whatever the autocast dtype);
- grads, AdamW state (exp_avg, exp_avg_sq: 2×) and the EMA shadow (fp32): one each per *trainable*
  parameter (stage 1 trains the encoder only; its frozen decoder has none of the three);
- activations: the bytes autograd saves for backward in one micro-batch (``train.batch_size``),
  counted on fake tensors by :mod:`piti_core.train.activations` (a frozen decoder runs in eval mode,
  as in the Trainer);
- transient: what is alive at the peak besides those, the largest of
  * the step's temporaries next to the saved activations (:data:`TRANSIENT_FACTOR`),
  * the optimizer's temporary (none for the fused AdamW the Trainer uses on CPU and CUDA; a copy of
    the largest parameter group for the multi-tensor one),
  * the preview grids: ``make_preview`` deep-copies the model while the gradients still exist;
- extra (upsampler stage): the discriminator with its gradients and Adam state, and the frozen
  perceptual network (weights only);
- baseline (CPU): the resident memory of the process before a model exists: python, torch, piti and
  what a first training step loads (:func:`runtime_baseline`).

peak = baseline + weights + grads + optimizer + EMA + extra + transient, where the transient part is
max(activations + temporaries, optimizer temporary, preview).

Gradients are counted next to all activations, though backward frees activations while it creates
gradients: measured peaks sit a little under the sum where gradients are large (stage 2), and at it
where they are small (docs/memory.md). Nothing here prints; :func:`estimate` returns a
:class:`Preflight`.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch
from attrs import field, frozen

from piti_core.errors import UsageError
from piti_core.train.activations import ActivationCount, Adversarial, build_fake, count_activations, fake_mode
from piti_core.train.recipe import stage_parameters

HEADROOM = 0.9  # an estimate above this fraction of the device's memory is reported as too tight
# Backward holds, next to the saved tensors, the gradient of the op being differentiated, its inputs'
# gradients and the gradients waiting at the UNet's skip connections; forward holds an op's output
# before it is saved. Counted as this many copies of the largest saved tensor (see docs/memory.md).
TRANSIENT_FACTOR = 4


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@frozen
class StageMemory:
    """The estimate of one stage; ``counts`` scales the activations to other batch sizes."""

    stage: str
    model: str
    batch_size: int
    checkpointing: bool
    params: int
    trainable: int
    weights: int
    grads: int
    optimizer: int
    ema: int
    extra: int
    baseline: int
    optimizer_temporary: int  # multi-tensor AdamW: sqrt of the second moment; fused AdamW: none
    preview: int  # the preview grids: an EMA copy of the model and a no-grad sampling batch (0: --no-preview)
    counts: ActivationCount = field(eq=False, repr=False)

    @property
    def static(self) -> int:
        """Everything but activations and temporaries: alive through the whole step."""
        return self.baseline + self.weights + self.grads + self.optimizer + self.ema + self.extra

    def activations_at(self, batch_size: int, checkpointing: bool) -> int:
        return self.counts.at(batch_size, checkpointing)

    def peak_at(self, batch_size: int, checkpointing: bool) -> int:
        act = self.activations_at(batch_size, checkpointing)
        c = self.counts
        # next to the saved activations: backward's temporaries, or the discriminator's step before it
        temporaries = int(max(TRANSIENT_FACTOR * c.largest, c.discriminator_step) * batch_size / c.batch_size)
        return self.static + max(act + temporaries, self.optimizer_temporary, self.preview)

    @property
    def activations(self) -> int:
        return self.activations_at(self.batch_size, self.checkpointing)

    @property
    def peak(self) -> int:
        return self.peak_at(self.batch_size, self.checkpointing)

    @property
    def transient(self) -> int:
        return self.peak - self.static - self.activations

    def as_dict(self) -> dict:
        keys = ("stage", "model", "batch_size", "checkpointing", "params", "trainable", "weights", "grads",
                "optimizer", "ema", "activations", "transient", "extra", "baseline", "preview", "peak")
        return {k: getattr(self, k) for k in keys}


@frozen
class Suggestion:
    message: str
    flags: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"message": self.message, "flags": list(self.flags)}


@frozen
class Preflight:
    device: str
    dtype: str
    batch_size: int
    grad_accum: int
    available: Optional[int]  # bytes this run may use on the device (None: unknown)
    memory_kind: str
    stages: tuple[StageMemory, ...]
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.stages), default=0)

    @property
    def verdict(self) -> str:
        """``fits``, ``tight`` (above :data:`HEADROOM` of the device), ``too-big`` or ``unknown``."""
        if self.available is None:
            return "unknown"
        if self.peak <= HEADROOM * self.available:
            return "fits"
        return "tight" if self.peak <= self.available else "too-big"

    def as_dict(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
                "grad_accum": self.grad_accum, "available": self.available, "memory_kind": self.memory_kind,
                "peak": self.peak, "verdict": self.verdict, "stages": [s.as_dict() for s in self.stages],
                "suggestions": [s.as_dict() for s in self.suggestions]}


# ------------------------------------------------------------------------------------------ device
def process_rss() -> Optional[int]:
    """Resident memory of this process (bytes), None where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def runtime_baseline(device: torch.device, dtype: torch.dtype) -> Optional[int]:
    """Resident bytes of this process once it holds what a training step loads besides its tensors.

    Creating an optimizer imports ``torch._dynamo`` and hundreds of modules (about 75 MB), and the
    first forward/backward maps the kernels' code and allocator arenas in; none of that scales with
    the model. A micro encoder + UNet (a few thousand parameters) takes one AdamW step here so that
    this process's resident memory includes them, then is dropped. None where /proc is missing.
    """
    import piti_core.train.objectives  # noqa: F401  (the modules a training process imports)
    from piti_core.models.encoder import TaskEncoder
    from piti_core.models.unet import UNet
    from piti_core.precision import autocast

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = TaskEncoder(3, width=32, layers=1, heads=1, cond_size=32, cnn_channels=(8, 8, 8, 8))
        net = UNet(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 1), attention_resolutions=(4,),
                   num_head_channels=32, cond_width=32, checkpointing=True)
        params = [*enc.parameters(), *net.parameters()]
        opt = torch.optim.AdamW(params, foreach=True)
        if device.type == "cpu":
            with autocast(device, dtype):
                tokens, pooled = enc(torch.rand(2, 3, 32, 32))
                out = net(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0]), tokens, pooled)
            out.float().square().mean().backward()
            opt.step()
        del enc, net, params, opt
    return process_rss()


def device_memory(device: torch.device) -> tuple[Optional[int], str]:
    """(bytes a training process may use, how it was measured).

    CPU: MemAvailable of /proc/meminfo plus this process's own resident memory (the estimate counts
    the process from its start). CUDA: the free memory ``torch.cuda.mem_get_info`` reports, taken
    after this process created its CUDA context, which stands in for the training process's context.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), f"cuda free ({total / 2**30:.1f} GiB total)"
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.strip()}
    except OSError:
        return None, "unknown (no /proc/meminfo)"
    if "MemAvailable" not in info:
        return None, "unknown (no MemAvailable)"
    return info["MemAvailable"] + (process_rss() or 0), "MemAvailable + this process"


# ------------------------------------------------------------------------------------------ estimate
class _Estimator:
    """Builds each model once on fake tensors and counts activations per (model, split, batch)."""

    def __init__(self, cfg, cond_channels: Optional[int], device_type: str, dtype: torch.dtype, baseline: int,
                 previews: bool = True, task=None):
        self.cfg, self.cond_channels, self.device_type, self.dtype = cfg, cond_channels, device_type, dtype
        self.task = task  # builds the encoder of the task models, as training does
        self.baseline, self.previews = baseline, previews
        self.mode = fake_mode()
        self.models: dict[str, torch.nn.Module] = {}
        self.counts: dict[tuple, ActivationCount] = {}

    def _model(self, name: str):
        if name not in self.models:
            from piti_core.models.build import build_model

            task = None if name.startswith("text_") else self.task
            self.models[name] = build_fake(lambda: build_model(name, self.cfg, self.cond_channels, task=task),
                                           self.mode, self.device_type)
        return self.models[name]

    def count(self, stage, batch_size: int) -> ActivationCount:
        from piti_core.diffusion import build_schedule

        key = (stage.model, stage.trains_decoder, batch_size)
        if key not in self.counts:
            model = self._model(stage.model)
            _, frozen = stage_parameters(model, stage)
            # the Trainer keeps a frozen decoder in eval mode (no dropout) unless train.frozen_dropout
            in_eval = tuple(frozen) if not self.cfg.train.frozen_dropout else ()
            ucfg = self._unet_cfg(stage)
            diff = self.cfg.diffusion
            schedule = build_schedule(diff.upsampler_schedule if ucfg.super_res else diff.schedule, diff.steps)
            if stage.model.startswith("text_"):
                cond_shape, cond_dtype = (self.cfg.text.context_length,), torch.long
            else:
                s = self.cfg.encoder.cond_size
                cond_shape, cond_dtype = (self.cond_channels, s, s), torch.float32
            self.counts[key] = count_activations(
                model, self.mode, batch_size=batch_size, image_size=ucfg.image_size, cond_shape=cond_shape,
                cond_dtype=cond_dtype, super_res=ucfg.super_res, schedule=schedule, dtype=self.dtype,
                device_type=self.device_type, frozen=in_eval, adversarial=self._adversarial(stage, active=True))
        return self.counts[key]

    def _unet_cfg(self, stage):
        return self.cfg.upsampler if stage.model.endswith("upsampler") else self.cfg.model

    def stage(self, stage, batch_size: int) -> StageMemory:
        model = self._model(stage.model)
        counts = self.count(stage, batch_size)
        params = list(model.parameters())
        groups, _ = stage_parameters(model, stage)
        trainable = [p for _, named, _ in groups for _, p in named]
        t_bytes = _bytes(trainable)
        return StageMemory(
            stage=stage.name, model=stage.model, batch_size=batch_size,
            checkpointing=self._unet_cfg(stage).checkpointing, params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in trainable), weights=_bytes(params) + _bytes(model.buffers()),
            grads=t_bytes, optimizer=2 * t_bytes, ema=4 * sum(p.numel() for p in trainable),
            extra=self._extra(stage), baseline=self.baseline, optimizer_temporary=self._adam_temporary(model, stage),
            preview=self._preview(model, stage, counts), counts=counts)

    def _preview(self, model, stage, counts: ActivationCount) -> int:
        """``make_preview`` deep-copies the model for its EMA weights while the step's gradients still
        exist, then samples 4 images (8 rows with guidance) without gradients: a no-grad pass holds a
        few of its largest tensors, counted like the step's temporaries."""
        if not self.previews:
            return 0
        rows = 4 * (2 if stage.uncond_p > 0 and not stage.model.endswith("upsampler") else 1)
        largest = counts.largest * rows / counts.batch_size
        return _bytes(model.parameters()) + _bytes(model.buffers()) + int(TRANSIENT_FACTOR * largest)

    def _adam_temporary(self, model, stage) -> int:
        """The multi-tensor AdamW allocates sqrt(exp_avg_sq) of a whole parameter group; the fused one
        (what the Trainer uses on CPU and CUDA) works tensor by tensor."""
        from piti_core.train.loop import _adamw_impl

        if _adamw_impl(torch.device(self.device_type)).get("fused"):
            return 0
        groups, _ = stage_parameters(model, stage)
        return max(_bytes(p for _, p in named) for _, named, _ in groups)

    def _adversarial(self, stage, active: bool = False) -> Optional[Adversarial]:
        """Fake discriminator and perceptual net of an adversarial stage (built with the stage, like
        ``_upsampler_parts``). ``active``: None too when the stage ends before ``train.adv_warmup``,
        when the perceptual and adversarial terms start."""
        t = self.cfg.train
        if not stage.adversarial or (active and stage.steps <= t.adv_warmup):
            return None
        if "adversarial" not in self.models:
            from piti_core.models.discriminator import NLayerDiscriminator

            from piti_core.train.perceptual import resolve_kind

            kind = resolve_kind(t.perceptual)

            def build():
                from piti_core.models.hed import HED
                from piti_core.train.perceptual import PerceptualLoss

                disc = NLayerDiscriminator(3, t.disc_channels)
                perceptual = PerceptualLoss(kind, network=HED()) if kind != "none" else None
                return Adversarial(disc, perceptual, t.gan)

            self.models["adversarial"] = build_fake(build, self.mode, self.device_type)
        return self.models["adversarial"]

    def _extra(self, stage) -> int:
        """Discriminator (weights, grads, Adam: 4×) and perceptual network of the upsampler stage."""
        adv = self._adversarial(stage)
        if adv is None:
            return 0
        perceptual = _bytes(adv.perceptual.parameters()) if adv.perceptual is not None else 0
        return 4 * _bytes(adv.disc.parameters()) + perceptual


def estimate(cfg, stages, *, cond_channels: Optional[int], device: str = "cpu", dtype: Optional[str] = None,
             baseline: Optional[int] = None, available: Optional[int] = None, previews: bool = True,
             task=None) -> Preflight:
    """Estimate the peak memory of each of ``stages`` (``piti_core.train.recipe.Stage``) of ``cfg``.

    ``dtype``: auto|fp32|bf16|fp16 (default ``cfg.train.dtype``); ``baseline``: resident bytes before
    the model (default: this process's now, on CPU; 0 on CUDA); ``available``: the device memory in
    bytes (default :func:`device_memory`); ``previews``: the run writes preview grids (``--no-preview``:
    False); ``task``: the Task whose encoder the task models get (default: the installed task
    ``cfg.task`` names, else the PITI task encoder). Suggestions are made when the estimate does not fit.
    """
    from piti_core.precision import resolve_dtype

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"the memory preflight knows cpu and cuda devices, not '{device}'")
    tdtype = resolve_dtype(dtype or cfg.train.dtype, dev)
    if baseline is None:
        baseline = (runtime_baseline(dev, tdtype) or 0) if dev.type == "cpu" else 0
    kind = "given"
    if available is None:
        available, kind = device_memory(dev)
    est = _Estimator(cfg, cond_channels, dev.type, tdtype, baseline, previews, task=_task(task, cfg))
    batch, accum = cfg.train.batch_size, cfg.train.grad_accum
    rows = tuple(est.stage(s, batch) for s in stages)
    result = Preflight(device=str(dev), dtype=str(tdtype).replace("torch.", ""), batch_size=batch, grad_accum=accum,
                       available=available, memory_kind=kind, stages=rows)
    if result.verdict in ("fits", "unknown"):
        return result
    return attrs.evolve(result, suggestions=tuple(_suggest(est, stages, rows, HEADROOM * available, batch, accum)))


def _task(task, cfg):
    """``task``, or the installed task ``cfg.task`` names (None when neither: the PITI task encoder)."""
    if task is not None or not cfg.task:
        return task
    from piti_core.plugins import get_plugin_manager

    return get_plugin_manager().tasks.get(cfg.task)


# ------------------------------------------------------------------------------------------ advice
def checkpoint_key(model: str) -> str:
    """The config key that turns on checkpointing for the model of a stage."""
    return "upsampler.checkpointing" if model.endswith("upsampler") else "model.checkpointing"


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _largest_batch(est, stages, rows, limit: float, effective: int, below: int,
                   checkpointing: dict) -> tuple[Optional[int], int]:
    """The largest divisor of ``effective`` under ``below`` at which every stage fits ``limit``, and
    the estimated peak there.

    Activations scaled linearly from the counted batch pick the candidate (weight copies, the only
    saved tensors that do not scale, are told apart by their shape; the scaling is within 1% of a
    recount on the tiny preset); it is then counted exactly, and smaller ones while it does not fit.
    """
    candidates = sorted(d for d in range(1, below) if effective % d == 0)
    if not candidates:
        return None, 0

    def exact(b: int) -> int:
        return max(r.peak_at(b, checkpointing[r.model]) for r in (est.stage(s, b) for s in stages))

    scaled = [b for b in candidates if all(r.peak_at(b, checkpointing[r.model]) <= limit for r in rows)]
    i = candidates.index(scaled[-1]) if scaled else 0
    while i >= 0:
        peak = exact(candidates[i])
        if peak <= limit:
            return candidates[i], peak
        i -= 1
    return None, 0


def _batch_flags(b: int, effective: int) -> tuple[str, ...]:
    return ("--set", f"train.batch_size={b}", "--set", f"train.grad_accum={effective // b}")


def _suggest(est, stages, rows, limit: float, batch: int, accum: int) -> list[Suggestion]:
    """Smaller micro-batches with more accumulation (same effective batch), and/or checkpointing."""
    out = []
    effective = batch * accum
    configured = {r.model: r.checkpointing for r in rows}
    b, peak = _largest_batch(est, stages, rows, limit, effective, batch, configured)
    if b is not None:
        out.append(Suggestion(f"micro-batch {b} × {effective // b} accumulation steps (the same effective batch "
                              f"{effective}): estimated peak {_fmt(peak)}", _batch_flags(b, effective)))
    over = {r.model for r in rows if r.peak > limit and not r.checkpointing}
    if over:
        keys = sorted({checkpoint_key(m) for m in over})
        ckpt = {m: c or m in over for m, c in configured.items()}
        flags = tuple(x for k in keys for x in ("--set", f"{k}=true"))
        peaks = [r.peak_at(batch, ckpt[r.model]) for r in rows]
        if max(peaks) <= limit:
            out.append(Suggestion(f"checkpointing keeps batch {batch}: estimated peak {_fmt(max(peaks))} "
                                  "(each block's forward runs again during backward)", flags))
        else:
            b, peak = _largest_batch(est, stages, rows, limit, effective, batch, ckpt)
            if b is not None:
                out.append(Suggestion(f"checkpointing with micro-batch {b} × {effective // b} accumulation steps: "
                                      f"estimated peak {_fmt(peak)}", flags + _batch_flags(b, effective)))
    if not out:
        out.append(Suggestion("no micro-batch size fits, even 1 with checkpointing: use a device with more "
                              "memory, --dtype bf16 where it runs natively, or a smaller model", ()))
    return out
