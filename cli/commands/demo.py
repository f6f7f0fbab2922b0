"""``piti demo [--run RUN_DIR] [--host 127.0.0.1] [--port N]``: a local page to draw a condition and sample."""

from __future__ import annotations

import contextlib
import signal
import threading

import click

from piti_cli.options import device_option

DEFAULT_RUN_HINT = "piti train --task sketch"  # the README's main command; it writes runs/sketch-tiny


def default_run(root=None):
    """The run the README's main command made (runs/sketch-tiny), else another runs/<task>-tiny; UsageError."""
    from pathlib import Path

    from piti_core.errors import UsageError

    runs = Path(root or ".") / "runs"
    first = runs / "sketch-tiny"
    found = [first] if (first / "run.json").is_file() else sorted(p.parent for p in runs.glob("*-tiny/run.json"))
    if not found:
        raise UsageError(f"no run given and {first} does not exist: make one with `{DEFAULT_RUN_HINT}` "
                         "(from this folder), or pass --run RUN_DIR")
    return found[0]


class _Terminated(Exception):
    """SIGTERM arrived: leave serve_forever() so the finally clause removes the uploads."""


def _on_sigterm(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_stops():
    """While serving, SIGTERM (e.g. `kill`, a service manager) stops the server like Ctrl+C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_loopback(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address.split("%")[0]).is_loopback


@click.command("demo")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/sketch-tiny from `piti train --task sketch`).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the page to your network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@device_option()
def command(run_dir, host, port, device) -> None:
    """Serve a local page: draw a sketch, paint a label map or upload a condition file, pick the guidance,
    sampler, steps and seed, and watch the base and upsampled images appear (one generation at a time)."""
    from piti_cli.ui import err_console
    from piti_core.demo.server import DemoApp, make_server

    app = DemoApp(run_dir or default_run(), device=device)
    try:
        server = make_server(app, host, port)
    except Exception:
        app.close()
        raise
    name, bound = server.server_address[:2]
    if not _is_loopback(name):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can use "
                          "the page and its CPU/GPU; use the default --host 127.0.0.1 to keep it local")
    shown = f"[{name}]" if ":" in name else name
    click.echo(f"piti demo: run {app.run_dir} (task {app.task.name}) at http://{shown}:{bound}/  (Ctrl+C stops)")
    try:
        with _sigterm_stops():
            server.serve_forever()
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        server.server_close()
        app.close()
