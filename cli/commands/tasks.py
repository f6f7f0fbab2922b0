"""``piti tasks``: the registered tasks and their conditions."""

from __future__ import annotations

import json

import click

from piti_cli.options import config_options


@click.command("tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@config_options
def command(as_json: bool, config) -> None:
    """List the registered tasks (condition channels depend on the config)."""
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    rows = []
    for name in sorted(host.tasks):
        task = host.tasks[name]
        spec = task.condition_spec(config)
        rows.append({
            "task": name,
            "plugin": host.owners["tasks"][name],
            "description": task.description,
            "sources": [f.name for f in task.data_fields()],
            "channels": spec.channels,
            "value_range": list(spec.value_range),
            "num_classes": spec.num_classes,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "plugin", "condition", "description")
    for r in rows:
        cond = f"{r['channels']} ch from {', '.join(r['sources'])}"
        table.add_row(r["task"], r["plugin"], cond, r["description"])
    Console(highlight=False).print(table)
