"""``piti plugins``: what is installed, who provides it, and whether it loaded."""

from __future__ import annotations

import json

import click


@click.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="Include built-in plugins (distribution piti).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("--check", is_flag=True, help="Exit 1 if any plugin failed to load.")
@click.pass_context
def command(ctx: click.Context, show_all: bool, as_json: bool, check: bool) -> None:
    """List plugins: name, distribution, version, what it provides, status."""
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    # make sure command hooks ran, so `provides` lists commands too
    ctx.find_root().command.list_commands(ctx.find_root())
    records = [r for r in host.records.values() if show_all or r.distribution != "piti"]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
    else:
        _table(records, show_all)
    if check and host.failures():
        raise click.exceptions.Exit(1)


def _table(records, show_all: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not records:
        hint = "" if show_all else " (built-in plugins are hidden; use --all)"
        click.echo(f"no plugins installed{hint}")
        return
    table = Table("plugin", "distribution", "version", "provides", "status")
    colours = {"ok": "green", "blocked": "yellow", "error": "red"}
    for r in records:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.provides.items()) or "-"
        status = f"[{colours[r.status]}]{r.status}[/]"
        if r.message:
            status += f" ({r.message})"
        table.add_row(r.name, r.distribution or r.source, r.version or "-", provides, status)
    console.print(table)
