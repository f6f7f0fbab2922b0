"""Terminal output: results go to stdout, status, warnings and progress bars to stderr (rich)."""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from rich.console import Console

err_console = Console(stderr=True, highlight=False)


def status(message: str) -> None:
    """One status line on stderr."""
    err_console.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"piti: warning: {message}", style="yellow", markup=False, soft_wrap=True)


class _StderrWarnings(logging.Handler):
    """Show the ``piti`` logger's warnings (e.g. a broken plugin) as one line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            warn(record.getMessage())
        else:
            status(record.getMessage())


def setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("piti")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


@contextlib.contextmanager
def progress(total: int | None, description: str, *, transient: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar with ETA on stderr. Yields ``advance(n=1, **fields)``.

    Extra fields (loss=..., stage=...) are shown after the bar. Nothing is drawn when stderr is not
    a terminal (logs, CI), so captured output stays clean.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err_console, transient=transient,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)

        yield advance


def multi_bar(console: Console):
    """A started rich Progress for several bars (description, bar, n/total, ETA); hidden off a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    bar.start()
    return bar


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
