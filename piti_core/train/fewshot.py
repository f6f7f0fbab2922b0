"""Few-shot finetuning: any registered task from N pairs (``--set fewshot.shots=N``; docs/fewshot.md).

Not a task but a recipe on top of every task, switched on by ``fewshot.shots > 0``:

* **data** — :func:`choose` keeps N training pairs, picked by a seeded hash of their stems (the same
  stems for the same N and seed on every machine, with any worker count; the 8 shots are inside the
  16), plus ``fewshot.holdout`` held-out pairs for early stopping, from the other training pairs or
  from the val split. The run directory records them in ``fewshot.json``; a resume checks them.
* **augmentation** — :func:`strong_augment`: flip, random zoom (crop), small rotation, colour jitter,
  applied jointly to the photo and every condition field through :class:`~piti_core.data.transforms.JointAugment`.
* **schedule** — :func:`fewshot_stages`: longer encoder-only stages, a short stage 2 and upsampler
  stage whose pretrained decoder learns at a fraction of the LR.
* **early stopping** — :meth:`FewShot.monitor`: the EMA model's diffusion loss on the held-out pairs
  at fixed timesteps and noise (:mod:`piti_core.train.early_stop`); each stage keeps its best weights.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import attrs
from attrs import frozen

from piti_core.errors import ConfigError, DataError
from piti_core.train.recipe import Stage

FEWSHOT_JSON = "fewshot.json"


# ------------------------------------------------------------------------------------------ the pairs
def rank_stems(stems, salt: str, seed: int) -> list[str]:
    """Stems ordered by ``sha1(f"{salt}:{seed}:{stem}")``: machine-independent, and a longer prefix
    of the order always holds a shorter one."""
    from piti_core.data.index import hash_unit

    return sorted(set(stems), key=lambda s: (hash_unit(f"{salt}:{seed}:{s}"), s))


@frozen
class FewShotPlan:
    shots: tuple[str, ...]
    holdout: tuple[str, ...]
    holdout_from: str
    seed: int

    def to_dict(self) -> dict:
        return {"shots": len(self.shots), "seed": self.seed, "holdout_from": self.holdout_from,
                "train_stems": list(self.shots), "holdout_stems": list(self.holdout)}


def choose(train_stems, val_stems, fcfg, where: str = "the data set") -> FewShotPlan:
    """The few-shot training stems and held-out stems of ``fcfg`` (a FewShotConfig).

    Held-out pairs are drawn first and do not depend on ``shots``, so runs with 8 and 16 shots stop
    on the same pairs; the shots are then drawn from the training pairs that are not held out.
    """
    train = sorted(set(train_stems))
    n_hold = fcfg.holdout
    if fcfg.holdout_from == "train":
        holdout = rank_stems(train, "fewshot-holdout", fcfg.seed)[:n_hold]
        pool = [s for s in train if s not in set(holdout)]
        after = f" after the {n_hold} held out for early stopping" if n_hold else ""
    else:
        val = sorted(set(val_stems))
        if len(val) < n_hold:
            raise ConfigError(f"fewshot.holdout={n_hold} needs {n_hold} pairs in the val split of {where}, which has "
                              f"{len(val)}; lower fewshot.holdout or set fewshot.holdout_from=train")
        holdout = rank_stems(val, "fewshot-holdout", fcfg.seed)[:n_hold]
        pool, after = train, ""
    if fcfg.shots > len(pool):
        raise ConfigError(f"fewshot.shots={fcfg.shots} but the train split of {where} has {len(pool)} pairs{after}; "
                          f"lower fewshot.shots" + (" or fewshot.holdout (or use fewshot.holdout_from=val)"
                                                    if after else ""))
    shots = rank_stems(pool, "fewshot", fcfg.seed)[:fcfg.shots]
    return FewShotPlan(tuple(sorted(shots)), tuple(sorted(holdout)), fcfg.holdout_from, fcfg.seed)


# ------------------------------------------------------------------------------------------ the recipe
def _scaled(steps: int, mult: float) -> int:
    return 0 if steps <= 0 or mult <= 0 else max(1, round(steps * mult))


def fewshot_stages(stages: list[Stage], fcfg) -> list[Stage]:
    """The PITI stages rescaled for tiny data: encoder-only stages ``stage1_mult`` longer, stage 2 and
    the upsampler shortened, and their pretrained decoders at ``decoder_lr_mult`` of their LR (the
    freshly initialised encoders keep the full LR)."""
    out = []
    for s in stages:
        if s.name in ("stage1", "stage1-cont"):
            s = attrs.evolve(s, steps=_scaled(s.steps, fcfg.stage1_mult))
        elif s.name in ("stage2", "upsampler") and s.decoder_lr is not None:
            mult = fcfg.stage2_mult if s.name == "stage2" else fcfg.upsampler_mult
            s = attrs.evolve(s, steps=_scaled(s.steps, mult), decoder_lr=s.decoder_lr * fcfg.decoder_lr_mult)
        out.append(s)
    return out


def strong_augment(fcfg, work_size: int, flip: bool = True):
    """The few-shot :class:`JointAugment` at the data set's work size (None when everything is off).

    Geometric steps move the photo and every condition together (conditions resampled nearest; the
    normals turned with a rotation). The rotation comes with a fixed zoom of cos a + sin a, so no
    padding ever shows: a padded border would invent class 0, zero depth or blank photo corners.
    Colour jitter touches the photo only; hue stays fixed so class -> colour statistics survive.
    """
    import kornia.augmentation as K

    from piti_core.data.transforms import JointAugment

    augs = []
    if flip:
        augs.append(K.RandomHorizontalFlip(p=0.5))
    if fcfg.crop_scale < 1.0:
        augs.append(K.RandomResizedCrop((work_size, work_size), scale=(fcfg.crop_scale, 1.0), ratio=(1.0, 1.0)))
    if fcfg.rotate > 0:
        a = math.radians(fcfg.rotate)
        zoom = math.cos(a) + math.sin(a)
        augs.append(K.RandomAffine(degrees=fcfg.rotate, scale=(zoom, zoom), p=0.5))
    if fcfg.color_jitter > 0:
        j = fcfg.color_jitter
        augs.append(K.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    return JointAugment(augs) if augs else None


# ------------------------------------------------------------------------------------------ data views
def _view(dataset, samples, *, train: bool, augment):
    """A copy of a PairedDataset over ``samples`` with its own training flag and augmentation."""
    view = copy.copy(dataset)
    view.samples, view.train, view.augment, view.skipped = list(samples), train, augment, list(dataset.skipped)
    return view


def _pick(dataset, stems, what: str):
    by_stem = {s.stem: s for s in dataset.samples}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise DataError(f"{dataset.root}: {what} pair '{missing[0]}' (from {FEWSHOT_JSON}) is not in the data set "
                        f"at size {dataset.image_sizes[0]}; the data set changed, start a new run")
    return [by_stem[s] for s in stems]


class FewShot:
    """The few-shot parts of one `piti train` run; see the module docstring."""

    def __init__(self, cfg, task, run_dir, *, rank: int = 0, callback=None):
        self.cfg, self.fcfg, self.task, self.run_dir = cfg, cfg.fewshot, task, Path(run_dir)
        self.rank, self.callback = rank, callback
        self.plan: FewShotPlan | None = None
        self._recorded = False
        self._train: dict[tuple, object] = {}  # image sizes -> the full training set
        self._val: dict[tuple, object] = {}
        self._heldout: dict[tuple, tuple] = {}

    # -------------------------------------------------------------------- training set
    def training_set(self, dataset, world: int = 1):
        """The few-shot view of the task's training set: the chosen pairs, strongly augmented,
        repeated so that one global batch fits (each repeat draws its own augmentation)."""
        self.choose_pairs(dataset)
        if not self._recorded:
            self._record(dataset)
        chosen = _pick(dataset, self.plan.shots, "training")
        repeats = max(1, math.ceil(self.cfg.train.batch_size * world / len(chosen)))
        work = max(max(dataset.image_sizes), dataset.cond_size)
        return _view(dataset, chosen * repeats, train=True, augment=strong_augment(self.fcfg, work, self.cfg.data.flip))

    def _val_set(self, sizes: tuple):
        if sizes not in self._val:
            self._val[sizes] = self.task.build_dataset(self.cfg, "val", image_sizes=sizes, train=False)
        return self._val[sizes]

    def choose_pairs(self, dataset) -> FewShotPlan:
        """The plan from the task's full training set (raises ConfigError when it is too small); call
        it before the run directory is written to refuse a bad ``fewshot.shots`` early."""
        from piti_core.data.dataset import require_paired_dataset

        require_paired_dataset(self.task, dataset, "few-shot training")
        self._train[tuple(dataset.image_sizes)] = dataset
        if self.plan is None:
            val = [s.stem for s in self._val_set(tuple(dataset.image_sizes)).samples] \
                if self.fcfg.holdout_from == "val" and self.fcfg.holdout else []
            self.plan = choose([s.stem for s in dataset.samples], val, self.fcfg, str(dataset.root))
        return self.plan

    def _record(self, dataset) -> None:
        """Write fewshot.json into the run directory, or check a resumed run's against the plan."""
        plan, path = self.plan, self.run_dir / FEWSHOT_JSON
        self._recorded = True
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("train_stems") != list(plan.shots) or saved.get("holdout_stems") != list(plan.holdout):
                raise DataError(f"{path} lists other pairs than fewshot.shots={self.fcfg.shots} (seed "
                                f"{self.fcfg.seed}) picks from {dataset.root} now; the data set changed since the run "
                                "started: restore it or start a new run")
        elif self.rank == 0:
            from piti_core.io import atomic_write_text

            atomic_write_text(path, json.dumps({**plan.to_dict(), "data": str(dataset.root)}, indent=2) + "\n")
        if self.callback is not None:
            hold = (f", {len(plan.holdout)} held-out pairs from the {plan.holdout_from} split for early stopping"
                    if plan.holdout else ", no early stopping (fewshot.holdout=0)")
            self.callback({"event": "message", "message": f"few-shot: {len(plan.shots)} training pairs (seed "
                           f"{plan.seed}){hold}; listed in {path}"})

    def summary(self) -> dict:
        """What run.json records about the few-shot run."""
        plan = self.plan.to_dict() if self.plan is not None else {}
        return {**plan, "file": FEWSHOT_JSON}

    # -------------------------------------------------------------------- early stopping
    def heldout_batch(self, sizes: tuple, device):
        """The held-out pairs at ``sizes``, unaugmented: (image (H, 3, s, s), cond (H, ...))."""
        import torch

        if sizes not in self._heldout:
            source = self._train[sizes] if self.plan.holdout_from == "train" else self._val_set(sizes)
            view = _view(source, _pick(source, self.plan.holdout, "held-out"), train=False, augment=None)
            items = [view[i] for i in range(len(view))]
            self._heldout[sizes] = tuple(torch.stack([it[k] for it in items]) for k in ("image", "cond"))
        image, cond = self._heldout[sizes]
        return image.to(device), cond.to(device)

    def monitor(self, stage: Stage):
        """Early stopping for ``stage`` on the held-out diffusion loss (None with fewshot.holdout=0)."""
        if not self.fcfg.holdout or stage.model not in ("base", "upsampler"):
            return None
        from piti_core.diffusion import build_schedule
        from piti_core.train.early_stop import EarlyStopping, heldout_diffusion_loss

        up = stage.model == "upsampler"
        cfg = self.cfg
        sizes = ((cfg.upsampler if up else cfg.model).image_size,)
        schedule = build_schedule(cfg.diffusion.upsampler_schedule if up else cfg.diffusion.schedule,
                                  cfg.diffusion.steps)

        def score(model, trainer):
            image, cond = self.heldout_batch(sizes, trainer.device)
            low = None
            if up:
                from piti_core.train.degrade import degrade

                low = degrade(image, cfg.upsampler.super_res, "bicubic")
            return heldout_diffusion_loss(model, image, cond, schedule=schedule, timesteps=self.fcfg.eval_timesteps,
                                          seed=self.fcfg.seed, batch_size=cfg.train.batch_size, low_res=low,
                                          autocast=trainer.autocast)

        return EarlyStopping(score, every=self.fcfg.eval_every, patience=self.fcfg.patience,
                             min_delta=self.fcfg.min_delta)
