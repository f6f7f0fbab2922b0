"""``piti sample --run RUN_DIR --input FILE|DIR``: images from condition files."""

from __future__ import annotations

import json

import click

from piti_cli.options import device_option, sample_settings, sampling_options, seed_option


@click.command("sample")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory from `piti train` or `piti convert`.")
@click.option("--input", "source", required=True, type=click.Path(), help="A condition file or a folder of them.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: a new one, RUN/samples-out, RUN/samples-out-2, ...; printed).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty output folder, replacing the files an earlier `piti sample` wrote there "
                   "(listed in its settings.json); other files are never replaced.")
@sampling_options
@seed_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch.")
@device_option()
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", help="Compute precision.")
@click.option("--compile", "use_compile", is_flag=True,
              help="torch.compile the decoders (the first batch compiles; see docs/compile.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def command(run_dir, source, out, overwrite, seed, batch_size, device, dtype, use_compile, as_json,
            **sampling) -> None:
    """Preprocess the inputs with the run's task, sample the base model, upsample, write PNGs,
    a grid and settings.json (the exact settings, to make the same images again)."""
    from pathlib import Path

    import torch

    from piti_cli.ui import err_console
    from piti_core.generate import list_inputs, run_task, sample_files, unused_folder
    from piti_core.runs import load_run_config

    cfg = load_run_config(run_dir)
    inputs = list_inputs(source, run_task(run_dir), cfg)  # a folder: the files the run's task reads
    settings = sample_settings(cfg.sample, sampling, seed=seed, batch_size=batch_size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out) if out else unused_folder(Path(run_dir) / "samples-out")
    with _Progress(err_console) as progress:
        result = sample_files(run_dir, inputs, out_dir, settings, device=device, dtype=dtype, overwrite=overwrite,
                              compile=use_compile, callback=progress)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(result["grid"])
    click.echo(f"{len(result['outputs'])} image(s) and settings.json in {result['out']}", err=True)


class _Progress:
    """One bar per stage and batch: base 'images 1-4 of 8', then upsampler."""

    def __init__(self, console):
        self.console, self.bar, self.key = console, None, None

    def __enter__(self):
        from piti_cli.ui import multi_bar

        self.bar = multi_bar(self.console)
        return self

    def __call__(self, event: dict) -> None:
        key = (event["stage"], event["batch"])
        if key != self.key:
            self.key = key
            self.task = self.bar.add_task(f"{event['stage']}: {event['batch']}", total=event["total"])
        self.bar.update(self.task, completed=event["i"] + 1)

    def __exit__(self, *exc):
        self.bar.stop()
        return False
