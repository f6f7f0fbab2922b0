"""``piti data``: make the toy world, check a data set without training.

    piti data toyworld --out DIR --n 2000 --size 256 --seed 0 [--overwrite]
    piti data check DIR [--format auto|folder|ade20k|coco-stuff|toyworld] [--json] [--skip-bad]

``check`` decodes every file with the loader's own readers and prints a summary on stdout (exit 0),
or every problem, one line each, and exits 1. With ``--skip-bad`` problems are warnings on stderr and
the exit code is 0 as long as one good pair is left (what a training run with --skip-bad would use).
No torch import at module level.
"""

from __future__ import annotations

import json

import click


@click.group("data")
def command() -> None:
    """Data sets: generate the toy world, validate a data set."""


@command.command("toyworld")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--n", "n", default=2000, show_default=True, type=click.IntRange(min=1), help="Number of samples.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=8), help="Resolution in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="World seed (same seed, same world).")
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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--skip-bad", is_flag=True, help="Report problems as warnings; exit 0 if any good pair is left.")
def check(root: str, fmt: str, val_fraction: float, as_json: bool, skip_bad: bool) -> None:
    """Validate every file of a data set: summary on stdout, or each problem (one line) and exit 1."""
    from piti_cli.ui import progress, warn
    from piti_core.data.validate import check_dataset

    with progress(None, "checking") as advance:
        def callback(event: dict) -> None:
            advance(1)

        report = check_dataset(root, fmt, val_fraction=val_fraction, callback=callback)
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
