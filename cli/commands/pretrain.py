"""``piti pretrain``: train the text-to-image prior (base and upsampler) on captioned images."""

from __future__ import annotations

from pathlib import Path

import click

from piti_cli.options import config_options
from piti_cli.training import (check_pretrain_run, common_train_options, resume_run, resumed_config, resumed_prior,
                               run_training)


@click.command("pretrain")
@click.option("--stage", default=None, help="Run only prior-base or prior-upsampler.")
@click.option("--prior", type=click.Path(file_okay=False), default=None,
              help="Start the decoders from this prior run (warm start); caption encoders start fresh.")
@common_train_options
@config_options(default_preset="tiny")
def command(stage: str | None, prior: str | None, config, **opts) -> None:
    """Pretrain the prior from images with captions (the toy world by default).

    This is the stand-in for GLIDE on machines that cannot download it: each decoder is trained with
    a caption encoder, from scratch. `piti train --prior RUN_DIR` then finetunes tasks from it.
    """
    from piti_core.train.finetune import prior_stages

    run = resume_run(opts)
    if run is not None:
        check_pretrain_run(run)
    config = resumed_config(config, opts)
    prior = resumed_prior(prior, opts)
    stages = prior_stages(config, stage)
    run_training(config, task=None, stages=stages, prior_dir=Path(prior) if prior else None,
                 default_name=f"prior-{config.preset}",
                 next_hint=lambda run: f"piti train --task sketch --prior {run}", source="pretrain", **opts)
