"""``piti data``: make the toy world, check a data set without training.

    piti data toyworld --out DIR --n 2000 --size 256 --seed 0 [--overwrite]
    piti data check DIR [--format auto|folder|ade20k|coco-stuff|toyworld] [--task NAME] [--json] [--skip-bad]
    piti data oracle --out DIR [--n 6000] [--seed 1000] [--steps 3000] [--overwrite]

``check`` decodes every file with the loader's own readers (with ``--task``: the fields that task
declares, each with its own reader) and prints a summary on stdout (exit 0),
or every problem, one line each, and exits 1. With ``--skip-bad`` problems are warnings on stderr and
the exit code is 0 as long as one good pair is left (what a training run with --skip-bad would use).
No torch import at module level.
"""

from __future__ import annotations

import json

import click

from piti_cli.options import device_option, seed_option


@click.group("data")
def command() -> None:
    """Data sets: generate the toy world, validate a data set."""


@command.command("toyworld")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--n", "n", default=2000, show_default=True, type=click.IntRange(min=1), help="Number of samples.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=8), help="Resolution in pixels.")
@seed_option(0, help="World seed (same seed, same world).")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty folder.")
def toyworld(out: str, n: int, size: int, seed: int, overwrite: bool) -> None:
    """Render the procedural toy world as paired folders (images, labels, edges, depth, normals, captions)."""
    from piti_cli.ui import progress
    from piti_core.data.toyworld import write_toyworld

    with progress(n, "toy world") as advance:
        state = {"done": 0}

        def callback(*args, **kwargs) -> None:
            done = _done(args, state["done"] + 1)
            advance(max(done - state["done"], 0))
            state["done"] = done

        path = write_toyworld(out, n, size, seed, callback=callback, overwrite=overwrite)
    click.echo(str(path or out))


def _done(args, default: int) -> int:
    """How many samples the renderer reports done: ``callback(done, total)``, a dict, or one call each."""
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    if args and isinstance(args[0], dict) and isinstance(args[0].get("done"), int):
        return args[0]["done"]
    return default


@command.command("check")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "folder", "ade20k", "coco-stuff", "toyworld"]), help="Data-set layout.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Share of stems hashed into val when the data set has no splits of its own.")
@click.option("--task", "task_name", default=None, metavar="NAME",
              help="Check the fields this task reads (its own file formats too), and that none is missing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--skip-bad", is_flag=True, help="Report problems as warnings; exit 0 if any good pair is left.")
def check(root: str, fmt: str, val_fraction: float, task_name: str | None, as_json: bool, skip_bad: bool) -> None:
    """Validate every file of a data set: summary on stdout, or each problem (one line) and exit 1."""
    from piti_cli.ui import progress, warn
    from piti_core.data.validate import check_dataset

    fields = None
    if task_name is not None:
        from piti_core.plugins import get_plugin_manager

        fields = get_plugin_manager().task(task_name).data_fields()  # an unknown task: one usage line
    with progress(None, "checking") as advance:
        def callback(event: dict) -> None:
            advance(1)

        report = check_dataset(root, fmt, val_fraction=val_fraction, callback=callback, fields=fields,
                               task=task_name)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        click.echo("\n".join(report.summary_lines()))
    elif skip_bad:
        for problem in report.problems:
            warn(str(problem))
        click.echo("\n".join(report.summary_lines()))
        click.echo(f"skipped     {report.bad_pairs} bad pair(s); {report.good} usable")
    else:
        for problem in report.problems:
            click.echo(str(problem))
    if not report.ok and not (skip_bad and report.good > 0):
        if not as_json:
            click.echo(f"{len(report.problems)} problem(s) in {report.root}; fix them or train with --skip-bad "
                       f"to leave {report.bad_pairs} bad pair(s) out", err=True)
        raise click.exceptions.Exit(1)


@command.command("oracle")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder to write (config.json, oracle.safetensors, training.json).")
@click.option("--n", "n", default=6000, show_default=True, type=click.IntRange(min=1),
              help="Training renders (world --seed, samples 0..n-1, 64 px).")
@click.option("--seed", default=1000, show_default=True, type=click.IntRange(min=0),
              help="World seed of the training renders.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1), help="Optimiser steps.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate.")
@seed_option(0, name="--init-seed", help="Seed of the weights, shuffling and augmentation.")
@click.option("--eval-n", default=512, show_default=True, type=click.IntRange(min=1), help="Held-out renders to score.")
@click.option("--eval-seed", default=777777, show_default=True, type=click.IntRange(min=0),
              help="World seed of the held-out renders (differs from --seed).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="torch CPU threads (0: default).")
@device_option(default="cpu")
@click.option("--overwrite", is_flag=True, help="Replace the oracle files in a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the training record (with held-out scores) as JSON.")
def oracle(out: str, n: int, seed: int, steps: int, batch_size: int, lr: float, init_seed: int, eval_n: int,
           eval_seed: int, threads: int, device: str, overwrite: bool, as_json: bool) -> None:
    """Train the toy-world oracle (image -> labels, depth, normals) and score it on held-out renders.

    It gives the mask, depth and normal tasks their alignment metrics and `piti eval` its toy-world
    feature space; piti ships one in piti_core/assets/oracle-tiny (see docs/oracle.md).
    """
    import torch

    from piti_cli.ui import progress, status
    from piti_core.errors import UsageError
    from piti_core.eval.oracle import Oracle
    from piti_core.eval.oracle_train import (OracleTrainOptions, check_oracle_out, evaluate_oracle, save_oracle,
                                             train_oracle)

    check_oracle_out(out, overwrite)  # before training, not after
    if eval_seed == seed:
        raise UsageError(f"--eval-seed {eval_seed} equals --seed: the held-out renders must come from another world")
    if threads:
        torch.set_num_threads(threads)
    opts = OracleTrainOptions(n=n, seed=seed, steps=steps, batch_size=batch_size, lr=lr, eval_n=eval_n,
                              eval_seed=eval_seed, init_seed=init_seed)
    done = {"train": 0, "eval": 0}  # renders so far
    with progress(n, "rendering") as render_bar, progress(steps, "training") as step_bar:
        def callback(event: dict) -> None:
            if event["event"] == "render":
                render_bar(event["done"] - done["train"])
                done["train"] = event["done"]
            elif event["event"] == "step":
                step_bar(1, loss=event["loss"], ce=event["ce"], depth=event["depth"], normal=event["normal"])

        net, record = train_oracle(opts, callback, device=device)
    from piti_core.data.toyworld import CLASSES

    with progress(eval_n, "held-out renders") as eval_bar:
        def on_eval(event: dict) -> None:
            eval_bar(event["done"] - done["eval"])
            done["eval"] = event["done"]

        scores = evaluate_oracle(Oracle(net, CLASSES).eval(), eval_n, eval_seed, callback=on_eval)
    record["command"] = (f"piti data oracle --out {out} --n {n} --seed {seed} --steps {steps} "
                         f"--batch-size {batch_size} --lr {lr:g} --init-seed {init_seed} --eval-n {eval_n} "
                         f"--eval-seed {eval_seed}" + (f" --threads {threads}" if threads else "")
                         + (f" --device {device}" if device != "cpu" else ""))
    record["heldout"] = scores
    path = save_oracle(out, net, record, overwrite=overwrite)
    status(f"held-out ({eval_n} renders of world {eval_seed}): mIoU {scores['miou']:.3f}, pixel acc "
           f"{scores['pixel_acc']:.3f}, AbsRel {scores['absrel']:.3f}, delta1 {scores['delta1']:.3f}, "
           f"normals {scores['normal_deg']:.1f} deg; trained in {record['train_seconds']:.0f} s")
    click.echo(json.dumps(record, indent=2) if as_json else str(path))
