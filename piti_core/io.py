"""Small file helpers: atomic writes and overwrite protection.

Files are written to a temporary sibling, flushed to disk (``fsync``) and moved into place with
:func:`os.replace`, and the folder's entry is flushed too, so neither a crash nor a power loss leaves a
half-written or empty checkpoint or config behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from piti_core.errors import UsageError


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk; a no-op where folders cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then atomically move the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        fsync_file(Path(tmp))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file or non-empty directory unless ``overwrite``."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it or choose another path")


def cached_tensors(cache: Path, build: Callable[[], dict], metadata: dict[str, str] | None = None) -> dict:
    """Tensors from the safetensors file ``cache``, or ``build()`` them and cache them (best effort).

    Used for weights converted once from a foreign format (HED's h5, the FID TorchScript file): a
    damaged cache is rebuilt, and a read-only cache folder only costs the conversion next time.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    cache = Path(cache)
    if cache.is_file():
        try:
            return load_file(str(cache))
        except (SafetensorError, OSError):
            pass
    tensors = build()
    try:
        atomic_write(cache, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except OSError:
        pass
    return tensors
