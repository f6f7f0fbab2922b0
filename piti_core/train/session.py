"""A training run: stages in order, a run directory that is also the checkpoint, exact resume.

Run directory::

    RUN/
      config.json          the resolved config (written first)
      progress.json        stages finished so far
      metrics.jsonl        one JSON object per logged step {"stage", "step", "loss", ...}, and per held-out
                           evaluation of early stopping {"stage", "step", "heldout_loss", ...}
      fewshot.json         few-shot runs: the training and held-out stems (piti_core.train.fewshot)
      samples/             preview grids: condition | sample | ground truth
      stages/<stage>.safetensors   EMA weights at the end of each stage
      checkpoints/         trainer checkpoints (see checkpoint.py); the last ``train.keep_checkpoints``
      base.safetensors, upsampler.safetensors, run.json    the finished run (piti_core.runs format)

The core never prints: progress goes to ``callback(event: dict)``; the CLI renders it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from piti_core.errors import CheckpointError, TrainingError, UsageError
from piti_core.io import atomic_write, atomic_write_text
from piti_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from piti_core.train.loop import BatchStream, Trainer, step_seed
from piti_core.train.recipe import Stage

Callback = Callable[[dict], None]
RUN_ENTRIES = ("config.json", "progress.json", "metrics.jsonl", "samples", "stages", "checkpoints", "run.json",
               "fewshot.json", "prior.json", "base.safetensors", "upsampler.safetensors", "text_base.safetensors",
               "text_upsampler.safetensors")


class Interrupted(Exception):
    """Raised after a resumable checkpoint was written because the user asked to stop."""


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to reuse a run directory unless ``resume`` or ``overwrite``; never touch foreign files."""
    run_dir = Path(run_dir)
    ours = [run_dir / e for e in RUN_ENTRIES if (run_dir / e).exists()]
    if resume:
        if not (run_dir / "config.json").is_file():
            raise UsageError(f"{run_dir} holds no run to resume (no config.json); drop --resume to start one")
        return
    if ours and not overwrite:
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


class RunLog:
    """metrics.jsonl + progress.json of a run directory."""

    def __init__(self, run_dir: Path, rank: int = 0):
        self.dir, self.rank = Path(run_dir), rank
        self._tb = None

    def progress(self) -> dict:
        p = self.dir / "progress.json"
        if not p.is_file():
            return {"done": []}
        try:
            prog = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{p} is corrupt ({exc}); it lists the finished stages of the run") from None
        if not isinstance(prog, dict) or not isinstance(prog.get("done"), list):
            raise CheckpointError(f"{p} is corrupt (no list of finished stages under \"done\")")
        return prog

    def mark_done(self, stage: str) -> None:
        if self.rank:
            return
        prog = self.progress()
        if stage not in prog["done"]:
            prog["done"].append(stage)
        atomic_write_text(self.dir / "progress.json", json.dumps(prog) + "\n")

    def metrics(self, row: dict) -> None:
        if self.rank:
            return
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self._tensorboard(row)

    def truncate_after(self, stage: str, step: int) -> None:
        """On resume drop rows logged after the checkpoint, so the log has each step once."""
        path = self.dir / "metrics.jsonl"
        if self.rank or not path.is_file():
            return
        rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        keep = [r for r in rows if not (r.get("stage") == stage and r.get("step", 0) > step)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def _tensorboard(self, row: dict) -> None:
        if self._tb is False:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("step",):
                self._tb.add_scalar(f"{row['stage']}/{k}", v, row["step"])


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """TrainingError if a floating-point tensor of ``state`` holds NaN or inf: such weights are never saved."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise TrainingError(f"{what}: weights became NaN/inf ({bad[0]}{more}); nothing was saved from it. Lower the "
                            "learning rate (train.*lr) and start a new run")


def save_stage_weights(run_dir: Path, stage: Stage, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = Path(run_dir) / "stages" / f"{stage.name}.safetensors"
    cpu = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata={"model": stage.model, "stage": stage.name}))


def finished_models(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Model name -> EMA weights of the last finished stage that trained it (in progress order)."""
    from safetensors import safe_open

    out = {}
    for name in RunLog(run_dir).progress()["done"]:
        path = Path(run_dir) / "stages" / f"{name}.safetensors"
        with safe_open(str(path), "pt") as fh:
            model = (fh.metadata() or {}).get("model")
        if model:
            out[model] = load_stage_weights(run_dir, name)
    return out


def load_stage_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_dir) / "stages" / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: stage '{name}' must finish before the stages that start from it")
    return load_file(str(path))


def run_stage(stage: Stage, index: int, *, run_dir: Path, build: Callable[[], tuple], tcfg, device, dtype,
              callback: Callback | None, should_stop: Callable[[], bool], preview: Callable | None = None,
              rank: int = 0, world: int = 1, wrap: Callable | None = None,
              num_workers: int = 0, monitor=None) -> dict[str, torch.Tensor]:
    """Train one stage (resuming from its latest checkpoint) and return its EMA model state.

    ``build()`` returns ``(model, groups, objective, dataset, frozen_modules)``; it is called with the
    global RNG seeded from the stage, so a fresh start and a resume build the same initial model.
    ``monitor``: an :class:`~piti_core.train.early_stop.EarlyStopping`; its evaluations go to the
    metrics log, it may end the stage early, and the stage then returns its best weights.
    """
    torch.manual_seed(step_seed(tcfg.seed, index, 2**31))
    model, groups, objective, dataset, frozen = build()
    stream = BatchStream(dataset, tcfg.batch_size, tcfg.seed + index, rank=rank, world=world,
                         num_workers=num_workers)
    trainer = Trainer(model=model, groups=groups, loss_fn=objective, stream=stream, tcfg=tcfg, device=device,
                      dtype=dtype, stage_index=index, aux=objective.aux(), rank=rank,
                      ddp_model=wrap(model) if wrap else None, frozen=frozen)
    if monitor is not None:
        trainer.aux[monitor.name] = monitor  # checkpointed with the trainer: resume stays exact
    log = RunLog(run_dir, rank)
    ckpt_root = Path(run_dir) / "checkpoints"
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        tensors, meta = load_checkpoint(latest)
        if meta.get("stage") == stage.name:
            trainer.load_state(tensors, meta)
            log.truncate_after(stage.name, trainer.step)
            _emit(callback, event="resume", stage=stage.name, step=trainer.step, checkpoint=str(latest))

    def checkpoint():
        if rank == 0:
            check_finite(dict(trainer.model.named_parameters()), f"stage {stage.name} at step {trainer.step}")
            tensors, meta = trainer.state()
            meta["stage"], meta["stage_index"] = stage.name, index
            save_checkpoint(ckpt_root, f"step-{index:02d}-{trainer.step:07d}", tensors, meta,
                            keep=tcfg.keep_checkpoints)
        _barrier(world)

    _emit(callback, event="stage", stage=stage.name, steps=stage.steps, start=trainer.step)
    import time

    deadline = time.monotonic() + 60 * tcfg.stage_minutes if tcfg.stage_minutes > 0 else None
    last: dict = {}

    def heldout() -> bool:
        row = monitor.evaluate(trainer, trainer.step)
        log.metrics({"stage": stage.name, "step": trainer.step, **row})
        _emit(callback, event="heldout", stage=stage.name, step=trainer.step, **row)
        stop = monitor.stopped = _agreed(monitor.stopped, world)
        if stop:
            _emit(callback, event="message", message=f"stage {stage.name}: held-out loss did not improve for "
                  f"{monitor.patience} evaluations; stopped at step {trainer.step}, keeping step {monitor.best_step}")
        return stop

    if monitor is not None and monitor.evals == 0 and trainer.step < stage.steps:
        heldout()  # the starting weights count too: a stage that only makes things worse keeps them
    while trainer.step < stage.steps and not (monitor is not None and monitor.stopped):
        if deadline is not None and _agreed(time.monotonic() > deadline, world):
            _emit(callback, event="message", message=f"stage {stage.name}: time budget of {tcfg.stage_minutes} min "
                                                     f"reached at step {trainer.step} of {stage.steps}")
            if last and trainer.step % tcfg.log_every:
                log.metrics({"stage": stage.name, "step": trainer.step, **{k: _num(v) for k, v in last.items()}})
            break
        if should_stop():
            checkpoint()
            raise Interrupted(f"stopped in stage {stage.name} at step {trainer.step}")
        logs = last = trainer.train_step()
        step = trainer.step
        _emit(callback, event="step", stage=stage.name, step=step, steps=stage.steps, **logs)
        if step % tcfg.log_every == 0 or step == stage.steps:
            log.metrics({"stage": stage.name, "step": step, **{k: _num(v) for k, v in logs.items()}})
        if preview is not None and rank == 0 and (step % tcfg.sample_every == 0 or step == stage.steps):
            path = preview(stage, step, trainer)
            _emit(callback, event="preview", stage=stage.name, step=step, path=str(path))
        if monitor is not None and (monitor.due(step) or step == stage.steps) and heldout():
            break
        if step % tcfg.save_every == 0 and step < stage.steps:
            checkpoint()
    trainer.check_ended_finite(stage.name)
    state = trainer.ema_model_state()
    if monitor is not None:
        if not monitor.stopped and monitor.last_step != trainer.step:  # e.g. ended by train.stage_minutes
            heldout()
        state = monitor.best_state(state)
    if rank == 0:
        check_finite(state, f"stage {stage.name}")
        save_stage_weights(run_dir, stage, state)
        log.mark_done(stage.name)
    checkpoint()
    if trainer.skipped:
        _emit(callback, event="message", message=f"stage {stage.name}: skipped {trainer.skipped} non-finite steps")
    return state


def _agreed(flag: bool, world: int) -> bool:
    """True on every rank when rank 0 says so (ranks must stop at the same step)."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, 0)
    return bool(t.item())


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _num(v: Any):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _emit(callback: Callback | None, **event) -> None:
    if callback is not None:
        callback(event)

