"""``piti train --task NAME``: the PITI recipe from a pretrained prior."""

from __future__ import annotations

from pathlib import Path

import click

from piti_cli.options import config_options, task_option
from piti_cli.training import common_train_options, resumed_config, run_training


@click.command("train")
@task_option()
@click.option("--prior", type=click.Path(file_okay=False), default=None,
              help="Prior run directory (default: the prior shipped for the preset); 'none': random decoders "
                   "(train from scratch, the baseline; ./none for a folder of that name).")
@click.option("--stage", default=None, help="Run only this stage: stage1, stage1-cont, stage2, upsampler.")
@common_train_options
@config_options(default_preset="tiny")
def command(task: str, prior: str | None, stage: str | None, config, **opts) -> None:
    """Finetune a task from the prior: stage 1, stage 1-cont, stage 2, then the upsampler.

    With no other argument this trains on the built-in toy world with the `tiny` preset from the
    shipped prior, writes a run directory and prints where it is.
    """
    from piti_core.plugins import get_plugin_manager
    from piti_core.train.finetune import finetune_stages, shipped_prior

    the_task = get_plugin_manager().task(task)
    config = resumed_config(config, opts, the_task)
    prior = _resumed_prior(prior, opts)
    scratch = prior == "none"
    prior_dir = None if scratch else Path(prior) if prior else shipped_prior(config.preset)
    if scratch:
        click.echo("prior: none (decoders start from random weights)", err=True)
    elif prior is None and prior_dir is not None:
        click.echo(f"prior: shipped {config.preset} prior ({prior_dir})", err=True)
    stages = finetune_stages(config, stage)
    run_training(config, task=the_task, stages=stages, prior_dir=prior_dir, default_name=f"{task}-{config.preset}",
                 next_hint=_next_hint, scratch=scratch, **opts)


def _resumed_prior(prior: str | None, opts: dict) -> str | None:
    """With --resume, the prior the run started from (prior.json): a run from scratch stays one."""
    if not opts.get("resume") or not opts.get("out"):
        return prior
    from piti_core.train.finetune import saved_prior_choice

    known, saved = saved_prior_choice(Path(opts["out"]))
    if not known:
        return prior
    if prior is None:
        return saved  # None: the shipped prior, as when the run started
    same = prior == saved or (prior != "none" and saved not in (None, "none")
                              and Path(prior).resolve() == Path(saved).resolve())
    if not same:
        started = "--prior none" if saved == "none" else f"--prior {saved}" if saved else "the shipped prior"
        raise click.UsageError(f"{opts['out']} was started with {started}; resume it with the same prior "
                               "(or drop --prior to reuse it)")
    return prior


def _next_hint(run) -> str:
    return f"piti sample --run {run} --input <condition file>   (or draw one: piti demo --run {run})"
