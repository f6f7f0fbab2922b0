"""The hostile-input corpus's one assertion: a bad input fails cleanly and leaves the user's files alone.

A case runs a ``piti`` command in-process (click's runner, stderr apart from stdout) and checks:
the exit code (1 data error, 2 usage error), exactly one non-empty line on stderr, no traceback and no
"internal error" in it, optional words the line must contain, and that every file under the watched
paths has the same bytes as before the command (and that no watched file appeared or vanished).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from click.testing import CliRunner

from piti_cli.main import cli


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), keyed by path."""
    digests: dict[str, str] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def invoke(*args: str, env: dict | None = None, input: str | None = None):
    """``piti ARGS`` in-process; the result has ``exit_code``, ``stdout`` and ``stderr`` apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=True,
                             prog_name="piti")


def assert_clean_failure(result, exit_code: int, *, mentions: Iterable[str] = (),
                         watched: dict[str, str] | None = None, watched_paths: Iterable[Path] = ()) -> str:
    """Assert a clean failure (see the module docstring); returns the one stderr line."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}") from result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == exit_code, (
        f"exit {result.exit_code}, expected {exit_code}; stderr:\n{result.stderr}")
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in line, line
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not in: {line}"
    if watched is not None:
        assert snapshot(*watched_paths) == watched, "an input file was changed, added or removed"
    return line
