"""``piti convert``: official PITI or GLIDE checkpoints → a piti run directory."""

from __future__ import annotations


import click

from piti_cli.options import config_options, recipe_option, seed_option, task_option


@click.command("convert")
@click.option("--base", "base", type=click.Path(dir_okay=False), default=None,
              help="Base (64×64) checkpoint, e.g. base_mask.pt (or GLIDE's base.pt with --glide).")
@click.option("--upsampler", type=click.Path(dir_okay=False), default=None,
              help="Upsampler (64→256) checkpoint, e.g. upsample_mask.pt (or GLIDE's upsample.pt with --glide).")
@task_option(required=True)
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--glide", is_flag=True,
              help="The inputs are GLIDE's base.pt / upsample.pt: keep the decoder, drop the text side, "
                   "start a new task encoder (for finetuning).")
@click.option("--cond-channels", type=click.IntRange(min=1), default=None,
              help="Condition channels (default: the task's). With official PITI files they are read from "
                   "the weights and checked against this.")
@seed_option(0, help="Seed of the new task encoder (--glide).")
@recipe_option("Sampling recipe stored in the run (default: official for official PITI files, fast with "
               "--glide); sample.* values a config or --set gives are kept.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print run.json on stdout instead of the path.")
@config_options
def command(base, upsampler, task, out, glide, cond_channels, seed, recipe, overwrite, as_json, config) -> None:
    """Convert released checkpoints into a run directory (config.json, run.json, *.safetensors).

    \b
    Official PITI weights (sizes and condition channels read from the tensors):
      piti convert --base base_mask.pt --upsampler upsample_mask.pt --task mask \\
          --set mask.encoding=rgb --set mask.palette=coco --set mask.num_classes=182 \\
          --out runs/piti-mask
    GLIDE weights as the starting point of finetuning (the task encoder starts random):
      piti convert --glide --base base.pt --upsampler upsample.pt --task sketch --out runs/glide-sketch

    The model sizes come from the weights; --preset/--config/--set give everything else (task
    options, training and sampling settings) and are saved in the run's config.json. Official PITI
    runs sample with the official recipe (DDPM 250 + fast27) unless --recipe fast; see docs/official.md.
    """

    from piti_cli.ui import status
    from piti_core.convert import convert_checkpoints
    from piti_core.errors import UsageError
    from piti_core.plugins import get_plugin_manager

    if base is None and upsampler is None:
        raise UsageError("give --base and/or --upsampler")
    expected = cond_channels
    if expected is None:
        expected = get_plugin_manager().task(task).condition_spec(config).channels

    def callback(info):
        status(f"convert: {info['stage']} {info['model']}")

    run_dir = convert_checkpoints(out, base=base, upsampler=upsampler, task=task, config=config, glide=glide,
                                  cond_channels=expected, seed=seed, overwrite=overwrite, recipe=recipe,
                                  callback=callback)
    if as_json:
        click.echo((run_dir / "run.json").read_text(encoding="utf-8").rstrip())
    else:
        click.echo(str(run_dir))
