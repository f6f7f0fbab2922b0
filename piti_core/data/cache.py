"""The preprocessing cache: conditions derived from a data set's files, computed once, kept in PITI_HOME.

A *preprocessor* is a registered function ``fn(array, **params) -> array`` that turns one source
array (an image, a depth map ...) into a condition (edges, normals ...). :func:`cached_conditions`
runs it over a data set and stores one ``.npy`` per sample under::

    $PITI_HOME/cache/conditions/<data-set folder name>-<hash of its absolute path>/
        <preprocessor>-<hash of version + params>/
            manifest.json      preprocessor name, version, params, source kind, data-set root and,
                               per stem, the source file's path, size and mtime
            <stem>.npy

A second run reuses every output whose source file still has the same size and mtime; a changed file
is recomputed, and a change of version or parameters selects another directory (so switching back
and forth is free). Nothing is ever written into the data set's own folder. ``PITI_HOME`` defaults
to ``$XDG_CACHE_HOME/piti`` (``~/.cache/piti``).

Plugins add preprocessors with :func:`register_preprocessor` (e.g. HED edges for the sketch task); a
field names the one that fills it when a data set lacks its folder (``Field(derive="edges-canny")``,
see :mod:`piti_core.data.fields`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from piti_core.data import readers
from piti_core.data.records import DatasetMeta, Problem
from piti_core.errors import DataError, UsageError
from piti_core.io import atomic_write, atomic_write_text

MANIFEST = "manifest.json"


def piti_home() -> Path:
    """``$PITI_HOME``, else ``$XDG_CACHE_HOME/piti``, else ``~/.cache/piti``."""
    home = os.environ.get("PITI_HOME", "").strip()
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache") / "piti"


def writable_home_dir(path: Path) -> Path:
    """Create the folder ``path`` (inside :func:`piti_home`) and check that piti can write there.

    A DataError names PITI_HOME and the folder when it cannot be made or written (PITI_HOME is a
    file, lies under one, or is read-only), before any work that would write there.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        reason = None if os.access(path, os.W_OK | os.X_OK) else "no write permission"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    if reason is not None:
        home = piti_home()
        name = f"PITI_HOME={home}" if os.environ.get("PITI_HOME", "").strip() else f"PITI_HOME (unset: {home})"
        raise DataError(f"{name} is not a folder piti can write: cannot write to {path} ({reason}); set PITI_HOME "
                        "to a writable folder (piti keeps its caches and the built-in toy world there)")
    return path


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Preprocessor:
    """A registered condition deriver: ``fn(source_array, **params) -> condition array``.

    ``from_meta`` fills params from the data set (e.g. its focal length). A preprocessor whose
    ``params`` hold ``short_side`` gets the condition size there from the data set (see
    :func:`piti_core.data.preprocess.canny_edges`); its output may then be smaller than the photo and
    the loader scales it back with nearest-neighbour sampling.
    """

    name: str
    produces: str  # condition kind: "edges", "normals", ...
    source: str  # "image" or a condition kind read from files ("depth")
    fn: Callable[..., np.ndarray]
    version: str
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    from_meta: Callable[[DatasetMeta], Mapping[str, Any]] | None = None

    def resolve_params(self, meta: DatasetMeta | None = None, **overrides) -> dict[str, Any]:
        params = dict(self.params)
        if meta is not None and self.from_meta is not None:
            params.update({k: v for k, v in self.from_meta(meta).items() if v is not None})
        params.update(overrides)
        return params


_REGISTRY: dict[str, Preprocessor] = {}
# which preprocessor fills a built-in field that a data set lacks (kept for old imports: the data layer
# reads it from each field's ``Field.derive``)
DEFAULT_DERIVERS = {"edges": "edges-canny", "normals": "normals-from-depth"}


def register_preprocessor(pre: Preprocessor, *, replace: bool = False) -> Preprocessor:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", pre.name):
        raise UsageError(f"preprocessor name '{pre.name}' must be lowercase letters, digits, '-', '_' or '.'")
    if pre.name in _REGISTRY and not replace and _REGISTRY[pre.name] is not pre:
        raise UsageError(f"preprocessor '{pre.name}' is already registered; choose another name")
    _REGISTRY[pre.name] = pre
    return pre


def _builtins() -> None:
    if "edges-canny" in _REGISTRY:
        return
    from piti_core.data import preprocess

    register_preprocessor(Preprocessor(
        "edges-canny", "edges", "image", preprocess.canny_edges, "1",
        {"low": 0.1, "high": 0.2, "sigma": 1.0, "kernel": 5, "short_side": 0},
        "Canny edges of the photo (kornia) at the condition size"))
    register_preprocessor(Preprocessor(
        "normals-from-depth", "normals", "depth", preprocess.normals_from_depth, "1",
        {"focal": None, "fov_deg": preprocess.DEFAULT_FOV_DEG},
        "surface normals from depth by finite differences (+x right, +y up, +z to camera)",
        from_meta=lambda m: {"focal": m.focal, "fov_deg": m.fov_deg}))


def preprocessors() -> dict[str, Preprocessor]:
    _builtins()
    return dict(_REGISTRY)


def get_preprocessor(name: str) -> Preprocessor:
    _builtins()
    if name not in _REGISTRY:
        raise UsageError(f"unknown preprocessor '{name}'; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


# --------------------------------------------------------------------------------------- cache


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_dir(root: Path, name: str, version: str, params: Mapping[str, Any]) -> Path:
    root = Path(root).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40] or "data"
    return (piti_home() / "cache" / "conditions" / f"{slug}-{_hash(str(root))}"
            / f"{name}-{_hash({'version': version, 'params': dict(params)})}")


@dataclass
class CachedConditions(Mapping[str, Path]):
    """stem -> cached ``.npy``; ``built``/``reused`` counts; ``skipped`` bad sources (with skip_bad)."""

    directory: Path
    paths: dict[str, Path]
    built: int = 0
    reused: int = 0
    skipped: list[Problem] = field(default_factory=list)

    def __getitem__(self, stem: str) -> Path:
        return self.paths[stem]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def _read_source(source, sample, meta: DatasetMeta) -> np.ndarray:
    """The input array of a preprocessor: the photo, or the field ``source`` (a name or a Field)."""
    if source == "image":
        return readers.read_image(sample.image)
    from piti_core.data.fields import resolve_field

    field = resolve_field(source)
    if field.name not in sample.conditions:
        raise DataError(f"{sample.image}: has no {field.name} file to derive from; add it or pass --skip-bad")
    return field.as_source(field.load(sample.conditions[field.name], meta))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write)


def cached_conditions(index, name: str, fn: Callable[..., np.ndarray], version: str, params: Mapping[str, Any],
                      callback: Callable[[dict], None] | None = None, *, source="image",
                      skip_bad: bool = False, save_every: int = 200) -> CachedConditions:
    """Run ``fn(source_array, **params)`` over ``index.samples``, reusing cached outputs.

    ``index`` is a :class:`~piti_core.data.index.DatasetIndex` (restrict it with ``with_samples``);
    ``source`` is "image", a field name or a :class:`~piti_core.data.fields.Field`. ``callback`` gets ``{"event": "preprocess", "name", "done", "total", "built", "reused"}`` after each
    sample. A source that cannot be read raises DataError, or with ``skip_bad`` is left out and listed
    in ``skipped``.
    """
    params = dict(params)
    field_source, source = source, getattr(source, "name", source)  # a Field object or a name
    directory = cache_dir(index.root, name, version, params)
    manifest_path = directory / MANIFEST
    files: dict[str, dict] = {}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            if (old.get("preprocessor"), old.get("version"), old.get("params")) == (name, version, params):
                files = dict(old.get("files", {}))
        except (json.JSONDecodeError, OSError, AttributeError):
            files = {}  # a damaged manifest only costs a rebuild

    def save() -> None:
        atomic_write_text(manifest_path, json.dumps({
            "preprocessor": name, "version": version, "params": params, "source": source,
            "root": str(Path(index.root).resolve()), "files": files}, indent=1, sort_keys=True) + "\n")

    result = CachedConditions(directory, {})
    writable = False  # checked once, before the first write
    total = len(index.samples)
    dirty = 0
    for done, sample in enumerate(index.samples, 1):
        src = sample.image if source == "image" else sample.conditions.get(source)
        out = directory / f"{sample.stem}.npy"
        try:
            st = os.stat(src) if src is not None else None
        except OSError:
            st = None
        entry = files.get(sample.stem)
        fresh = (st is not None and entry is not None and out.is_file() and entry.get("source") == str(src)
                 and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns)
        if fresh:
            result.reused += 1
            result.paths[sample.stem] = out
        else:
            if not writable:
                writable_home_dir(directory)
                writable = True
            try:
                arr = np.asarray(fn(_read_source(field_source, sample, index.meta), **params))
            except DataError as exc:
                if not skip_bad:
                    raise
                result.skipped.append(readers.problem_of(exc, Path(src or sample.image), sample.stem))
                continue
            _save_npy(out, arr)
            files[sample.stem] = {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                  "output": out.name}
            result.built += 1
            result.paths[sample.stem] = out
            dirty += 1
            if dirty >= save_every:
                save()
                dirty = 0
        if callback is not None:
            callback({"event": "preprocess", "name": name, "done": done, "total": total,
                      "built": result.built, "reused": result.reused})
    if dirty or not manifest_path.is_file():
        writable_home_dir(directory)
        save()
    return result


def cached_preprocessor(index, pre: Preprocessor, callback=None, *, skip_bad: bool = False,
                        **overrides) -> CachedConditions:
    """:func:`cached_conditions` for a registered preprocessor, params filled from the data set."""
    return cached_conditions(index, pre.name, pre.fn, pre.version, pre.resolve_params(index.meta, **overrides),
                             callback, source=pre.source, skip_bad=skip_bad)
