"""``piti config``: show the resolved config of a preset, files and overrides."""

from __future__ import annotations

import click

from piti_cli.options import config_options


@click.command("config")
@config_options
def command(config) -> None:
    """Print the resolved config as JSON (same as --print-config on any command)."""
    from piti_core.config import config_to_json

    click.echo(config_to_json(config))
