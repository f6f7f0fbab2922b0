"""The ``piti`` command group.

Sub-commands live in ``piti_cli.commands.<module>`` and are imported only when used (or listed by
``--help``), so ``piti --help`` never imports torch. Plugins add commands through the
``register_commands(cli)`` hook.

Exit codes: 0 ok, 1 domain error (bad data, missing checkpoint ...), 2 usage error (bad option,
unknown task, bad config key). Errors are one line on stderr; ``--verbose`` or ``PITI_DEBUG=1``
adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from piti_core import __version__
from piti_core.errors import PitiError

# name -> module under piti_cli.commands exposing `command`
BUILTIN_COMMANDS: dict[str, str] = {
    "plugins": "plugins",
    "tasks": "tasks",
    "config": "config",
    "data": "data",
    "pretrain": "pretrain",
    "train": "train",
    "sample": "sample",
    "eval": "eval",
    "fid": "fid",
    "convert": "convert",
    "bench": "bench",
    "demo": "demo",
}


def _debug(ctx: click.Context | None) -> bool:
    if os.environ.get("PITI_DEBUG", "").lower() in ("1", "true", "yes"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("verbose"))


def load_plugin_modules(ctx: click.Context) -> None:
    """Import the ``-p`` modules once: a broken one is a warning line (PluginError when strict)."""
    modules = ctx.find_root().params.get("plugin_modules") or ()
    if modules:
        from piti_core.plugins import get_plugin_manager

        host = get_plugin_manager()
        for module in modules:
            host.load_module(module)


class PitiClickError(click.ClickException):
    """A PitiError rendered by click as ``Error: <one line>`` with the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PitiGroup(click.Group):
    """Lazy sub-commands, plugin commands, and one-line errors."""

    def _plugin_commands(self, ctx: click.Context) -> None:
        from piti_core.plugins import get_plugin_manager

        load_plugin_modules(ctx)
        get_plugin_manager().add_commands(self, reserved=BUILTIN_COMMANDS)

    def list_commands(self, ctx):
        self._plugin_commands(ctx)
        names = [n for n in BUILTIN_COMMANDS if self._load_builtin(n) is not None]
        return names + sorted(n for n in self.commands if n not in BUILTIN_COMMANDS)

    def _load_builtin(self, name: str):
        if name not in BUILTIN_COMMANDS:
            return None
        try:
            module = importlib.import_module(f"piti_cli.commands.{BUILTIN_COMMANDS[name]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"piti_cli.commands.{BUILTIN_COMMANDS[name]}":
                return None  # command not shipped in this build
            raise
        return module.command

    def get_command(self, ctx, name):
        cmd = self._load_builtin(name)
        if cmd is not None:
            return cmd
        self._plugin_commands(ctx)
        return self.commands.get(name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's standalone mode, with a usage error as one line: ``Error: <what> (see 'piti x --help')``."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, EOFError, KeyboardInterrupt):
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PitiError as exc:
            if _debug(ctx):
                traceback.print_exc()
            raise PitiClickError(str(exc), exc.exit_code) from exc
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _debug(ctx):
                raise
            raise PitiClickError(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)", 1
            ) from exc


@click.group(cls=PitiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="piti", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug messages.")
@click.option("-p", "--plugin", "plugin_modules", multiple=True, metavar="MODULE",
              help="Load an uninstalled plugin module by import name (repeatable).")
def cli(verbose: bool, plugin_modules: tuple[str, ...]) -> None:
    """piti: image-to-image translation with a pretrained diffusion prior (PITI).

    Results go to stdout; status, warnings and progress bars to stderr.
    """
    from piti_cli.ui import setup_logging

    setup_logging(verbose)
    load_plugin_modules(click.get_current_context())  # every command reports a broken -p module


def main() -> None:
    from piti_cli.ui import setup_logging

    setup_logging(os.environ.get("PITI_DEBUG", "") not in ("", "0"))
    cli(prog_name="piti")


if __name__ == "__main__":
    main()
