"""``piti train --task NAME``: the PITI recipe from a pretrained prior."""

from __future__ import annotations

from pathlib import Path

import click

from piti_cli.options import config_options, task_option
from piti_cli.training import (common_train_options, resume_run, resumed_config, resumed_prior, resumed_task,
                               run_training)


@click.command("train")
@task_option(required=False)
@click.option("--prior", type=click.Path(file_okay=False), default=None,
              help="Prior run directory (default: the prior shipped for the preset); 'none': random decoders "
                   "(train from scratch, the baseline; ./none for a folder of that name).")
@click.option("--stage", default=None, help="Run only this stage: stage1, stage1-cont, stage2, upsampler.")
@common_train_options
@config_options(default_preset="tiny")
def command(task: str | None, prior: str | None, stage: str | None, config, **opts) -> None:
    """Finetune a task from the prior: stage 1, stage 1-cont, stage 2, then the upsampler.

    With no other argument this trains on the built-in toy world with the `tiny` preset from the
    shipped prior, writes a run directory and prints where it is. `--task` is required, except with
    `--resume`, which continues the run in --out with its own task and config.
    """
    from piti_core.plugins import get_plugin_manager
    from piti_core.train.finetune import finetune_stages, shipped_prior

    run = resume_run(opts)
    if run is not None:
        task = resumed_task(run, task)
    elif task is None:
        raise click.UsageError("Missing option '--task' (the task to train, see `piti tasks`; "
                               "not needed with --resume)")
    the_task = get_plugin_manager().task(task)
    config = resumed_config(config, opts, the_task)
    prior = resumed_prior(prior, opts)
    scratch = prior == "none"
    prior_dir = None if scratch else Path(prior) if prior else shipped_prior(config.preset)
    note = ""
    if scratch:
        note = "prior: none (decoders start from random weights)"
    elif prior is None and prior_dir is not None:
        note = f"prior: shipped {config.preset} prior ({prior_dir})"
    stages = finetune_stages(config, stage)
    run_training(config, task=the_task, stages=stages, prior_dir=prior_dir, default_name=f"{task}-{config.preset}",
                 next_hint=_next_hint, scratch=scratch, note=note, **opts)


def _next_hint(run) -> str:
    return f"piti sample --run {run} --input <condition file>   (or draw one: piti demo --run {run})"
