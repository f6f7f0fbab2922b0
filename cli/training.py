"""What `piti train` and `piti pretrain` share: options, the progress display, Ctrl-C handling."""

from __future__ import annotations

import functools
import shlex
import signal
import time
from pathlib import Path

import click

from piti_cli.options import device_option, seed_option


def common_train_options(func):
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Run directory (default: runs/<task>-<preset>, numbered if it exists).")
    @click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
    @click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
    @click.option("--data", type=click.Path(file_okay=False), default=None, help="Data set root (default: toy world).")
    @click.option("--skip-bad", is_flag=True, help="Skip bad image/condition pairs instead of stopping.")
    @device_option()
    @click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
                  help="Compute precision (default: train.dtype).")
    @click.option("--no-preview", is_flag=True, help="Do not write sample grids during training.")
    @click.option("--compile", "use_compile", is_flag=True,
                  help="torch.compile the models (the first step compiles; see docs/compile.md).")
    @click.option("--dry-run", is_flag=True,
                  help="Estimate each stage's peak memory, compare it with the device's and suggest batch / "
                       "accumulation / checkpointing flags that fit; trains nothing, writes nothing.")
    @click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the estimate as JSON on stdout.")
    @seed_option(help="Training seed: the same as --set train.seed=N, recorded in the run's config.json "
                      "(default: train.seed, 0).")
    @functools.wraps(func)
    def wrapper(*args, seed=None, **kwargs):
        if seed is not None:  # after the --set items, so --seed wins over --set train.seed
            kwargs["overrides"] = (*kwargs.get("overrides", ()), f"train.seed={seed}")
        return func(*args, **kwargs)

    return wrapper


def _apply_overrides(cfg, data, skip_bad, dtype):
    import attrs

    if data:
        cfg = attrs.evolve(cfg, data=attrs.evolve(cfg.data, root=str(data)))
    if skip_bad:
        cfg = attrs.evolve(cfg, data=attrs.evolve(cfg.data, skip_bad=True))
    if dtype:
        cfg = attrs.evolve(cfg, train=attrs.evolve(cfg.train, dtype=dtype))
    return cfg


# what a resumed run may change against its config.json: how it runs, not what it trains
RESUME_MAY_CHANGE = ("train.dtype", "data.num_workers", "data.skip_bad")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resume_run(opts: dict) -> Path | None:
    """With ``--resume``, the run directory to continue (``--out``), checked before any work: it must hold
    a run (its ``config.json``). None without --resume."""
    if not opts.get("resume"):
        return None
    if not opts.get("out"):
        raise click.UsageError("--resume needs --out RUN_DIR, the run to continue")
    run = Path(opts["out"])
    if not run.exists():
        raise click.UsageError(f"{run} does not exist, so there is no run to resume; drop --resume to start one")
    if not (run / "config.json").is_file():
        raise click.UsageError(f"{run} holds no run to resume (no config.json); drop --resume to start one")
    return run


def _saved_config(run: Path):
    from piti_core.config import load_config
    from piti_core.plugins import get_plugin_manager

    return load_config(run / "config.json", get_plugin_manager().task_sections())


def run_kind(run: Path) -> tuple[str | None, str | None]:
    """``(command, task)`` of a run directory: ("train", "sketch"), ("pretrain", ""), or None for what the
    run does not record (runs written before piti recorded it). Read from config.json's ``task``, the
    ``source`` in prior.json and run.json."""
    import json

    task = _saved_config(run).task or None
    sources = []
    for name in ("prior.json", "run.json"):
        try:
            meta = json.loads((run / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            sources.append(meta.get("source"))
            task = task or (meta.get("task") or None)
    if "pretrain" in sources:
        return "pretrain", ""
    return ("train" if task or "train" in sources else None), task


def resumed_task(run: Path, given: str | None) -> str:
    """The task of the run ``piti train --resume`` continues: the one it records; ``--task``, when given,
    must name the same one (and names it for runs that do not record it)."""
    command, task = run_kind(run)
    if command == "pretrain":
        raise click.UsageError(f"{run} is a `piti pretrain` run; resume it with: "
                               f"{shlex.join(['piti', 'pretrain', '--out', str(run), '--resume'])}")
    if task is None:
        if given is None:
            raise click.UsageError(f"{run} does not record its task (written by an older piti); "
                                   "pass --task NAME with --resume")
        return given
    if given is not None and given != task:
        raise click.UsageError(f"{run} is a run of task '{task}', not '{given}'; drop --task to resume it, "
                               f"or train task '{given}' in another --out")
    return task


def check_pretrain_run(run: Path) -> None:
    """``piti pretrain --resume`` continues a pretrain run only."""
    command, task = run_kind(run)
    if command == "train" and task:
        raise click.UsageError(f"{run} is a run of task '{task}'; resume it with: "
                               f"{shlex.join(['piti', 'train', '--out', str(run), '--resume'])}")


def resumed_prior(prior: str | None, opts: dict) -> str | None:
    """With --resume, the prior the run started from (prior.json): a run from scratch stays one."""
    if not opts.get("resume") or not opts.get("out"):
        return prior
    from piti_core.train.finetune import saved_prior_choice

    known, saved = saved_prior_choice(Path(opts["out"]))
    if not known:
        return prior
    if prior is None:
        return saved  # None: the shipped prior (train) or no warm start (pretrain), as when the run started
    same = prior == saved or (prior != "none" and saved not in (None, "none")
                              and Path(prior).resolve() == Path(saved).resolve())
    if not same:
        ctx = click.get_current_context(silent=True)
        default = "no --prior" if ctx is not None and ctx.info_name == "pretrain" else "the shipped prior"
        started = "--prior none" if saved == "none" else f"--prior {saved}" if saved else default
        raise click.UsageError(f"{opts['out']} was started with {started}; resume it with the same prior "
                               "(or drop --prior to reuse it)")
    return prior


def resumed_config(config, opts: dict, task=None):
    """With ``--resume``, the run's saved ``config.json``: a resumed run continues with the settings it
    started with. Without --preset/--config/--set the saved config is used as it is; with them, they
    must resolve to the same config (apart from :data:`RESUME_MAY_CHANGE`), else one UsageError line
    names the keys that differ. ``--data``/``--skip-bad``/``--dtype`` apply on top, ``--data`` only when
    it names the same data set."""
    if not opts.get("resume") or not opts.get("out"):
        return config
    path = Path(opts["out"]) / "config.json"
    if not path.is_file():
        return config  # resume_run says there is no run to resume
    import attrs

    from piti_core.config import config_to_dict

    saved = _saved_config(Path(opts["out"]))
    params = click.get_current_context().params
    given = bool(params.get("preset") or params.get("config_files") or params.get("overrides")
                 or params.get("seed") is not None)
    base = config if given else saved
    # what --data/--skip-bad/--dtype set is the saved value unless the flag is given again
    base = attrs.evolve(base, data=attrs.evolve(base.data, root=saved.data.root, skip_bad=saved.data.skip_bad),
                        train=attrs.evolve(base.train, dtype=saved.train.dtype))
    cfg = _apply_overrides(base, opts.get("data"), opts.get("skip_bad"), opts.get("dtype"))
    if given and task is not None:  # what the run recorded from its data set (Task.run_config)
        cfg = task.run_config(cfg)
    a, b = _flat(config_to_dict(saved)), _flat(config_to_dict(cfg))
    # the task is checked by resumed_task (runs of older versions do not record it)
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in (*RESUME_MAY_CHANGE, "task")]
    if differ:
        shown = ", ".join(f"{k} ({a.get(k)!r} in config.json, {b.get(k)!r} given)" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise click.UsageError(f"--resume continues {path} and the options change {shown}{more}; drop the "
                               "--preset/--config/--set/--data options that differ, or start a new run in another --out")
    return cfg


def check_data_root(cfg) -> None:
    """A data set given with --data or data.root must exist (checked before the run directory is made)."""
    from piti_core.errors import DataError

    root = cfg.data.root
    if root and not Path(root).expanduser().is_dir():
        what = "is a file, not a data set folder" if Path(root).expanduser().exists() else "does not exist"
        raise DataError(f"data set {root} {what} (--data / data.root); give the folder of the data set, "
                        "or none for the toy world")


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: what config.json and prior.json do not record is repeated."""
    ctx = click.get_current_context()
    parts = ["piti"]
    for module in ctx.find_root().params.get("plugin_modules") or ():
        parts += ["-p", module]
    parts += [ctx.info_name, "--out", str(run_dir), "--resume"]
    p = ctx.params
    if p.get("stage"):
        parts += ["--stage", p["stage"]]
    if p.get("device"):
        parts += ["--device", p["device"]]
    if p.get("no_preview"):
        parts.append("--no-preview")
    if p.get("use_compile"):
        parts.append("--compile")
    return shlex.join(parts)


def _nothing_left(run_dir: Path, stages) -> bool:
    """Whether the run is finished (run.json written) with every stage of ``stages`` done."""
    from piti_core.train.session import RunLog

    if not (run_dir / "run.json").is_file():
        return False
    done = set(RunLog(run_dir).progress().get("done", []))
    return all(s.name in done for s in stages)


def _default_out(name: str) -> Path:
    base = Path("runs") / name
    if not base.exists():
        return base
    i = 2
    while (Path("runs") / f"{name}-{i}").exists():
        i += 1
    return Path("runs") / f"{name}-{i}"


class Display:
    """Renders trainer events: a rich progress bar per stage on stderr."""

    def __init__(self):
        from piti_cli.ui import err_console

        self.console = err_console
        self.bar = None
        self.task = None
        self.data_bar = None
        self.stage_t0 = None
        self.seen: set[str] = set()
        self.t0 = time.time()

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "plan":
            self.console.print(f"stages: {', '.join(event['stages'])}  device {event['device']}  "
                               f"dtype {event['dtype']}  processes {event['world']}", markup=False, soft_wrap=True)
        elif kind == "stage":
            self._close()
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=self.console, disable=not self.console.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task(event["stage"], total=event["steps"], completed=event["start"], info="")
            self.stage_t0 = None
            if not self.console.is_terminal:
                self.console.print(f"stage {event['stage']}: steps {event['start']}..{event['steps']}", markup=False)
        elif kind == "step" and self.bar is not None:
            now = time.time()
            if self.stage_t0 is None:
                self.stage_t0, self.stage_s0 = now, event["step"] - 1
            # the clock starts at the first step's end: that step's own time is unknown, so the rate
            # counts the steps after it (and is not shown before there is one)
            done, elapsed = event["step"] - 1 - self.stage_s0, now - self.stage_t0
            rate = done / elapsed if done > 0 and elapsed > 0 else None
            info = f"loss {event['loss']:.4f}  " + (f"{rate:.2f} it/s" if rate else "-- it/s")
            self.bar.update(self.task, completed=event["step"], info=info)
            if not self.console.is_terminal and (event["step"] % 50 == 0 or event["step"] == event["steps"]):
                eta = f"{(event['steps'] - event['step']) / rate:.0f} s" if rate else "--"
                self.console.print(f"{event['stage']} {event['step']}/{event['steps']}  {info}  eta {eta}",
                                   markup=False, soft_wrap=True)
        elif kind in ("toyworld", "preprocess"):
            self._data_progress(event)
        elif kind == "heldout":
            self._once(f"{event['stage']} step {event['step']}: held-out loss {event['heldout_loss']:.4f} "
                       f"(best {event['best_heldout_loss']:.4f} at step {event['best_step']})")
        elif kind == "skip":
            self._once(f"skipped bad pair {event['count']}: {event['problem']}")
        elif kind in ("preview", "resume", "message", "skip-stage"):
            text = {"preview": lambda e: f"samples: {e['path']}",
                    "resume": lambda e: f"resuming {e['stage']} at step {e['step']} from {e['checkpoint']}",
                    "skip-stage": lambda e: f"stage {e['stage']} already done",
                    }.get(kind, lambda e: str(e.get("message", e)))(event)
            self._once(text)

    def _once(self, text: str) -> None:
        """Print a status line, once per distinct text (each stage re-opens the data set)."""
        if text in self.seen:
            return
        self.seen.add(text)
        (self.bar.console if self.bar else self.console).print(text, markup=False, soft_wrap=True)

    def _data_progress(self, event: dict) -> None:
        label = "toy world" if event["event"] == "toyworld" else f"preprocess {event.get('name', '')}"
        if self.data_bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.data_bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=self.console, transient=True,
                                     disable=not self.console.is_terminal)
            self.data_bar.start()
            self.data_task = self.data_bar.add_task(label, total=event["total"])
        self.data_bar.update(self.data_task, completed=event["done"], total=event["total"])
        if event["done"] >= event["total"]:
            self.data_bar.stop()
            self.data_bar = None

    def _close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def close(self):
        self._close()


def run_training(config, *, task, stages, prior_dir, default_name: str, next_hint, out, resume, overwrite, data,
                 skip_bad, device, dtype, no_preview, dry_run: bool = False, as_json: bool = False,
                 source: str = "train", scratch: bool = False, use_compile: bool = False, note: str = "") -> None:
    """Train ``stages`` into the run directory with a progress display; ``note`` is printed once the
    options are checked. A resumed run with nothing left to train says so and exits 0."""
    import torch

    cfg = _apply_overrides(config, data, skip_bad, dtype)
    check_data_root(cfg)
    if not dry_run:  # PITI_HOME must hold the toy world before the run folder is made
        from piti_core.data.default import check_default_data

        check_default_data(cfg)
    if resume and out and _nothing_left(Path(out), stages):
        click.echo(f"{out} is complete: every stage ({', '.join(s.name for s in stages)}) is done, "
                   "nothing is left to train", err=True)
        click.echo(str(out))
        return
    if note:
        click.echo(note, err=True)
    if dry_run:  # advisory: exit 0 whatever the verdict (docs/memory.md)
        from piti_cli.preflight_view import show_preflight

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cfg = task.run_config(cfg) if task is not None else cfg  # the config the run would train with
        show_preflight(cfg, task=task, stages=stages, device=device, dtype=None, as_json=as_json,
                       previews=not no_preview)
        return
    if as_json:
        raise click.UsageError("--json goes with --dry-run (a training run prints its directory)")

    from piti_core.train.finetune import train
    from piti_core.train.session import Interrupted

    run_dir = Path(out) if out else (_default_out(default_name) if not resume else None)
    if run_dir is None:
        raise click.UsageError("--resume needs --out RUN_DIR")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        click.echo("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    display = Display()
    t0 = time.time()
    try:
        train(cfg, task=task, run_dir=run_dir, stages=stages, prior_dir=prior_dir, resume=resume, overwrite=overwrite,
              device=device, callback=display, should_stop=lambda: stop["flag"], previews=not no_preview,
              source=source, scratch=scratch, compile=use_compile)
    except Interrupted as exc:
        display.close()
        click.echo(f"{exc}; resume with: {resume_command(run_dir)}", err=True)
        raise click.exceptions.Exit(130)
    finally:
        display.close()
        signal.signal(signal.SIGINT, previous)
    minutes = (time.time() - t0) / 60
    click.echo(f"finished in {minutes:.1f} min; samples in {run_dir / 'samples'}", err=True)
    click.echo(f"next: {next_hint(run_dir)}", err=True)
    click.echo(str(run_dir))
