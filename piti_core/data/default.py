"""The embedded default data set: a toy world generated once and cached under PITI_HOME.

A command that needs data and is given none (``data.root = ""``) trains / evaluates on the built-in
toy world (:mod:`piti_core.data.toyworld`) at the preset's resolution — the largest of the base image,
upsampler image and condition sizes — with ``data.toyworld_samples`` samples and ``data.toyworld_seed``.
It lives in ``$PITI_HOME/toyworld/<size>-<n>-<seed>/``; it is rendered into a temporary sibling
folder and renamed into place when complete, so an interrupted run never leaves a half world behind
and two processes racing for it both end up with a complete one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from piti_core.data.cache import piti_home, writable_home_dir
from piti_core.errors import DataError

log = logging.getLogger("piti")


def toyworld_dir(size: int, n: int, seed: int) -> Path:
    """Cache folder of a generated world; the generator's VERSION is part of the key, so a changed
    renderer never serves stale files."""
    from piti_core.data.toyworld import VERSION

    return piti_home() / "toyworld" / f"v{VERSION}-{size}-{n}-{seed}"


def _say(callback: Callable[[dict], None] | None, message: str, path: Path) -> None:
    log.info(message)
    if callback is not None:
        callback({"event": "message", "message": message, "path": str(path)})


def ensure_toyworld(size: int, n: int, seed: int, *, callback: Callable[[dict], None] | None = None) -> Path:
    """The folder of the toy world (size, n, seed), rendering it first if it is not cached yet.

    ``callback`` gets ``{"event": "message", "message", "path"}`` once, and the renderer's progress
    as ``{"event": "toyworld", "done", "total"}``.
    """
    final = toyworld_dir(size, n, seed)
    if (final / "dataset.json").is_file():
        _say(callback, f"no data set given: using the built-in toy world ({n} samples, {size} px, seed {seed}) "
                       f"at {final}", final)
        return final
    writable_home_dir(final.parent)  # a clean error before any status line or rendering
    _say(callback, f"no data set given: rendering the built-in toy world ({n} samples, {size} px, seed {seed}) "
                   f"once into {final}", final)
    try:
        from piti_core.data.toyworld import write_toyworld
    except ImportError as exc:
        raise DataError(f"the built-in toy world is unavailable ({exc}); pass a data set with --set data.root=DIR"
                        ) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        def progress(done: int, total: int) -> None:
            if callback is not None:
                callback({"event": "toyworld", "done": done, "total": total})

        write_toyworld(tmp / "world", n, size, seed, callback=progress)
        try:
            os.rename(tmp / "world", final)
        except OSError:
            if not (final / "dataset.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def preset_resolution(cfg) -> int:
    """The largest image or condition size of a :class:`~piti_core.config.PitiConfig`."""
    return max(cfg.model.image_size, cfg.upsampler.image_size, cfg.encoder.cond_size)


def check_default_data(cfg) -> None:
    """Raise DataError now when ``cfg`` needs the toy world rendered and PITI_HOME cannot hold it.

    For commands to call before their first status line; rendering itself checks again.
    """
    if cfg.data.root:
        return
    final = toyworld_dir(preset_resolution(cfg), cfg.data.toyworld_samples, cfg.data.toyworld_seed)
    if not (final / "dataset.json").is_file():
        writable_home_dir(final.parent)


def default_dataset_root(cfg, *, callback: Callable[[dict], None] | None = None) -> Path:
    """``cfg.data.root`` when given, else the cached toy world at the preset's resolution (see module doc)."""
    if cfg.data.root:
        return Path(cfg.data.root).expanduser()
    return ensure_toyworld(preset_resolution(cfg), cfg.data.toyworld_samples, cfg.data.toyworld_seed,
                           callback=callback)
