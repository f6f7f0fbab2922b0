"""Small file helpers: atomic writes and overwrite protection.

Files are written to a temporary sibling, flushed to disk (``fsync``) and moved into place with
:func:`os.replace`, and the folder's entry is flushed too, so neither a crash nor a power loss leaves a
half-written or empty checkpoint or config behind.

:class:`OutputFolder` is the one rule for a command's output folder (``piti sample``, ``piti eval``):
piti never writes over a file it did not create. ``--overwrite`` removes only the outputs an earlier
run of the command recorded as its own; a file of the user's that has an output's name is refused.
Outputs are written into a hidden folder inside the output folder first and moved into place only
when the command succeeds, so a failure leaves the folder as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable

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


def relative_name(name) -> str | None:
    """``name`` as a POSIX path inside a folder, or None when it is not a string, is absolute or climbs
    out of the folder (``..``)."""
    if not isinstance(name, str) or not name.strip():
        return None
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts or posix.as_posix() == ".":
        return None
    return posix.as_posix()


STAGE_PREFIX = ".piti-partial-"


class OutputFolder:
    """A command's output folder, written without replacing any file piti did not write.

    ``owned``: the paths (relative to ``out``) an earlier run of the command wrote there, from its own
    record (settings.json, metrics.json); ``--overwrite`` (``overwrite``) removes exactly those.
    ``inputs``: the command's input files; a folder that holds one of them directly is refused. A
    subfolder or a parent of the input folder is allowed: outputs are written flat into ``out`` (or into
    a subfolder the command names) and inputs are never read from subfolders, so no output can land on
    an input, and :meth:`claim` still refuses any existing file that is not an earlier output.
    Refusals are :class:`~piti_core.errors.UsageError` (exit 2), raised before any work:

    * ``out`` is a file, or directly holds an input file;
    * ``out`` is not empty and ``overwrite`` is not given;
    * a path the command will write (:meth:`claim`) exists and is not in ``owned``, or a subfolder the
      command fills (:meth:`claim_folder`) holds such a file.

    Use as a context manager: files go to :attr:`stage` (a hidden folder inside ``out``); on success the
    earlier outputs are removed and the staged files moved into place; on an error the stage and any
    folder created for it are removed, so nothing is left behind.
    """

    def __init__(self, out, *, owned: Iterable[str] = (), overwrite: bool = False, inputs: Iterable[Path] = (),
                 command: str = "piti"):
        self.out, self.command = Path(out), command
        self.owned = {n for n in map(relative_name, owned) if n is not None}
        self.claimed: set[str] = set()
        self.stage: Path | None = None
        self._created: list[Path] = []
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"{self.out} is a file; --out must be a folder")
        self._refuse_inputs(inputs)
        if _non_empty(self.out) and not overwrite:
            raise UsageError(f"{self.out} already exists; pass --overwrite to replace it or choose another path")

    def _refuse_inputs(self, inputs: Iterable[Path]) -> None:
        out = self.out.resolve()
        for path in inputs:
            if Path(path).resolve().parent == out:
                raise UsageError(f"--out {self.out} holds the input file {Path(path).name}; piti never writes its "
                                 "outputs among its inputs: choose another --out folder")

    def claim(self, names: Iterable[str]) -> None:
        """Declare the paths (relative to ``out``) the command will write; refuse one that exists and
        was not written by an earlier run of the command."""
        for name in names:
            rel = relative_name(name)
            if rel is None:
                raise ValueError(f"output name {name!r} is not a path inside the output folder")
            target = self.out / rel
            if (target.exists() or target.is_symlink()) and rel not in self.owned:
                raise UsageError(f"{target} exists and was not written by {self.command}; piti never replaces "
                                 "such a file: move it away or choose another --out folder")
            self.claimed.add(rel)

    def claim_folder(self, name: str) -> None:
        """Declare a subfolder the command fills with names known only later (eval's ``samples/``):
        refuse now when it holds any file an earlier run of the command did not write."""
        sub = self.out / name
        if sub.is_dir():
            self.claim(sorted(p.relative_to(self.out).as_posix() for p in sub.rglob("*")
                              if p.is_file() or p.is_symlink()))

    def __enter__(self) -> "OutputFolder":
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        self.stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.out))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._publish()
                return False
            except BaseException:
                self._discard()
                raise
        self._discard()
        return False

    def _publish(self) -> None:
        staged = sorted(p for p in self.stage.rglob("*") if p.is_file())
        names = [p.relative_to(self.stage).as_posix() for p in staged]
        self.claim(names)  # a file the caller forgot to claim is checked here, before anything moves
        for rel in sorted(self.owned):
            old = self.out / rel
            if old.is_file() or old.is_symlink():
                old.unlink()
        folders = {self.out}
        for src, rel in zip(staged, names):
            dest = self.out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            folders.add(dest.parent)
        shutil.rmtree(self.stage, ignore_errors=True)
        for folder in folders:
            fsync_dir(folder)

    def _discard(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break


def _non_empty(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


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
