"""Data-set fields: what a task reads from a data set besides its images, declared once.

A :class:`Field` says where its file lies for a sample (the paired-folder layout
``<root>/<folder>/<stem><suffix>``), how to read it (path -> array), how it is resampled when the
sample is cropped and resized (nearest for class ids, bilinear/area/bicubic for continuous maps,
max-pool for thin lines), how a flip or rotation changes its values (``vector``: the x/y components of
a direction, as surface normals), whether it can be derived from other data (``derive``: a registered
preprocessor, cached under PITI_HOME) and what random but valid values look like (contract tests).

A task declares the fields it needs in ``Task.fields`` (Field objects, or the names of fields other
tasks declare); the data layer reads any field the same way. The built-in fields below are declared
by the built-in task plugins (mask: labels, sketch: edges, geometry: depth and normals); ``image`` is
the data set's photo, always read::

    FEATURES = Field("feat16", folder="features", suffixes=(".npy",), read=read_features, channels=16,
                     resample="bilinear")

A reader returns a numpy array (or torch tensor) ``(H, W)`` or channels-first ``(C, H, W)`` at the
image's resolution, or a dict of such arrays keyed by output name (the field's own name, plus the
bool masks it lists in ``masks``, e.g. ``depth_valid``). Whatever else goes wrong in a reader (an
exception other than :class:`~piti_core.errors.DataError`) becomes a one-line DataError naming the
file and the field. No torch import at module level.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from piti_core.data.records import DatasetMeta
from piti_core.errors import DataError

if TYPE_CHECKING:  # numpy is imported where arrays are handled: declaring fields stays light
    import numpy as np

RESAMPLING = ("nearest", "maxpool", "bilinear", "area", "bicubic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
DTYPES = ("float32", "int64")


def _err(path: Path, message: str) -> DataError:
    from piti_core.data.readers import _err as err

    return err(path, message)


@dataclass(frozen=True, eq=False)
class Field:
    """One kind of per-sample data a task reads (see the module docstring).

    ``channels``: the channel count of the main array (None: any); ``dtype``: "float32" or "int64"
    (class ids: always resampled nearest); ``squeeze``: hand ``(H, W)`` instead of ``(1, H, W)`` to
    the task; ``binary``: threshold at 0.5 after resampling; ``clamp``: (low, high) applied after
    resampling — None (the default) never clamps; ``lossless``: refuse JPEG/WebP files; ``derive``:
    the registered preprocessor that makes the field when a data set has no folder for it;
    ``cache``: a version string to keep the decoded arrays under PITI_HOME (for an expensive reader;
    change it when the reader changes), None reads the files every time.
    """

    name: str
    read: Callable[..., Any] | None = None
    folder: str = ""
    suffixes: tuple[str, ...] = (".png",)
    channels: int | None = 1
    dtype: str = "float32"
    resample: str = "nearest"
    clamp: tuple[float, float] | None = None
    squeeze: bool = False
    binary: bool = False
    masks: tuple[str, ...] = ()
    vector: bool = False
    lossless: bool = True
    derive: str | None = None
    cache: str | None = None
    probe: Callable[[Path, DatasetMeta], tuple[int, int]] | None = None
    from_cache: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None
    synthetic: Callable[..., Mapping[str, Any]] | None = None
    partner_suffix: Callable[[DatasetMeta], str] | None = None
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        import re

        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name or ""):
            raise ValueError(f"field name {self.name!r} must be lower-case letters, digits or '_'")
        if self.name in ("cond", "caption", "stem", "image_hr", "cond_image"):
            raise ValueError(f"field name '{self.name}' is reserved (a key of every sample)")
        if self.resample not in RESAMPLING:
            raise ValueError(f"field '{self.name}': resample must be one of {', '.join(RESAMPLING)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"field '{self.name}': dtype must be one of {', '.join(DTYPES)}")
        suffixes = tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in self.suffixes)
        object.__setattr__(self, "suffixes", suffixes)
        object.__setattr__(self, "folder", self.folder or self.name)
        if self.clamp is not None and not self.clamp[0] < self.clamp[1]:
            raise ValueError(f"field '{self.name}': clamp must be (low, high) with low < high")

    def __repr__(self) -> str:
        return f"<Field '{self.name}' {self.folder}/*{'|'.join(self.suffixes)}>"

    # ------------------------------------------------------------------------------ layout
    @property
    def keys(self) -> tuple[str, ...]:
        """The sample keys this field fills: its name and its masks."""
        return (self.name, *self.masks)

    def resampling(self, key: str) -> str:
        """How ``key`` (this field or one of its masks) is resampled."""
        if key != self.name or self.dtype == "int64":
            return "nearest"
        return self.resample

    def path_for(self, root: Path, stem: str, meta: DatasetMeta | None = None) -> Path:
        """Where this field's file of sample ``stem`` belongs in a paired-folder data set."""
        suffix = self.partner_suffix(meta or DatasetMeta()) if self.partner_suffix else self.suffixes[0]
        return Path(root) / self.folder / f"{stem}{suffix}"

    # ------------------------------------------------------------------------------ reading
    def load(self, path: Path, meta: DatasetMeta | None = None) -> dict[str, np.ndarray]:
        """The arrays of one file (``{name: ..., mask: ...}``), checked, or a one-line DataError naming it."""
        path = Path(path)
        meta = meta or DatasetMeta()
        if self.read is None:
            raise _err(path, f"the {self.name} field has no reader; the task that declares it must give read=")
        if path.suffix.lower() == ".npy":
            from piti_core.data.readers import _npy_header

            _npy_header(path)  # not an array file: one line, before the reader sees it
        out = self._plugin_call(path, lambda: self.read(path, meta) if _takes_meta(self.read) else self.read(path))
        return self.check_arrays(path, out)

    def _plugin_call(self, path: Path, call):
        """``call()`` of a plugin's reader or probe: any error but DataError/MemoryError becomes one DataError
        line naming the file and the field."""
        try:
            return call()
        except (DataError, MemoryError):
            raise
        except Exception as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise _err(path, f"cannot be read as {self.name} ({msg}); fix or replace the file") from None

    def check_arrays(self, path: Path, out: Any) -> dict[str, np.ndarray]:
        """Normalise a reader's result to ``{key: numpy array}`` and check its shape, type and values."""
        import numpy as np

        arrays = dict(out) if isinstance(out, Mapping) else {self.name: out}
        arrays = {k: _numpy(v) for k, v in arrays.items()}
        main = arrays.get(self.name)
        if main is None:
            raise _err(path, f"the {self.name} reader returned no '{self.name}' array; fix the task's field reader")
        if main.ndim not in (2, 3) or main.dtype.kind not in "biuf":
            raise _err(path, f"gives a {main.dtype} array of shape {main.shape} for {self.name}; expected numbers "
                             "of shape (H, W) or (C, H, W)")
        c = 1 if main.ndim == 2 else main.shape[0]
        if self.channels is not None and c != self.channels:
            shape = "(H, W)" if self.channels == 1 else f"({self.channels}, H, W)"
            raise _err(path, f"has {c} channel(s) but the {self.name} field needs {self.channels}; save a {shape} "
                             "array")
        if main.dtype.kind == "f" and not np.isfinite(main).all():
            raise _err(path, f"holds {int((~np.isfinite(main)).sum())} NaN/inf value(s) in {self.name}; "
                             "fix the file")
        return arrays

    def probe_size(self, path: Path, meta: DatasetMeta | None = None) -> tuple[int, int]:
        """(width, height) of a file, from its header where possible (no full decoding)."""
        path = Path(path)
        meta = meta or DatasetMeta()
        if self.probe is not None:
            return self._plugin_call(path, lambda: self.probe(path, meta))
        if path.suffix.lower() == ".npy":
            from piti_core.data.readers import _check_pixels, _npy_header

            shape, dtype = _npy_header(path)
            if len(shape) not in (2, 3) or dtype.kind not in "biuf":
                raise _err(path, f"holds a {dtype} array of shape {shape}; {self.name} needs numbers of shape "
                                 "(H, W) or (C, H, W)")
            h, w = shape[-2:]
            _check_pixels(path, w, h)
            return w, h
        if path.suffix.lower() in IMAGE_SUFFIXES:
            from piti_core.data.readers import _open

            with _open(path) as img:
                return img.size
        arrays = self.load(path, meta)
        h, w = arrays[self.name].shape[-2:]
        return w, h

    def cached(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of a derived (cached ``.npy``) copy of this field."""
        if self.from_cache is not None:
            return dict(self.from_cache(arr))
        return {self.name: arr}

    def as_source(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """This field as the input of a preprocessor: NaN where its first mask says invalid."""
        import numpy as np

        arr = arrays[self.name]
        if self.masks and self.masks[0] in arrays:
            valid = arrays[self.masks[0]]
            return np.where(valid, arr, np.nan).astype(np.float32)
        return arr

    # ------------------------------------------------------------------------------ synthetic
    def synthetic_values(self, size: int, generator, spec=None) -> dict[str, Any]:
        """Random but valid tensors of this field at ``size`` (contract tests, benchmarks)."""
        import torch

        if self.synthetic is not None:
            return dict(self.synthetic(size, generator, spec))
        c = self.channels or 1
        if self.dtype == "int64":
            x = torch.randint(0, 2, (c, size, size), generator=generator)
        elif self.binary:
            x = (torch.rand(c, size, size, generator=generator) > 0.9).float()
        else:
            x = torch.rand(c, size, size, generator=generator)
        out = {self.name: x[0] if self.squeeze else x}
        out.update({m: torch.ones(1, size, size, dtype=torch.bool) for m in self.masks})
        return out


def _numpy(value) -> np.ndarray:
    import numpy as np

    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _takes_meta(fn: Callable) -> bool:
    """Whether a reader takes ``(path, meta)`` rather than ``(path)``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


# ---------------------------------------------------------------------------------- built-in fields


def _read_labels(path: Path, meta: DatasetMeta):
    from piti_core.data.readers import read_labels

    return read_labels(path, meta)


def _read_edges(path: Path, meta: DatasetMeta):
    from piti_core.data.readers import read_edges

    return read_edges(path)


def _read_depth(path: Path, meta: DatasetMeta):
    from piti_core.data.readers import read_depth

    depth, valid = read_depth(path, meta)
    return {"depth": depth, "depth_valid": valid}


def _read_normals(path: Path, meta: DatasetMeta):
    import numpy as np

    from piti_core.data.readers import read_normals

    normals, valid = read_normals(path, meta)
    return {"normals": np.moveaxis(normals, -1, 0), "normals_valid": valid}


def _probe(kind: str) -> Callable[[Path, DatasetMeta], tuple[int, int]]:
    return _Probe(kind)


@dataclass(frozen=True)
class _Probe:
    """The header check of a built-in field (picklable, for DataLoader workers)."""

    kind: str

    def __call__(self, path: Path, meta: DatasetMeta) -> tuple[int, int]:
        from piti_core.data.readers import probe

        return probe(self.kind, path, meta)


def _cached_edges(arr):
    return {"edges": arr.astype(bool)}


def _cached_normals(arr):
    import numpy as np

    from piti_core.data.readers import decode_normals

    n, v = decode_normals(arr.astype(np.float32))
    return {"normals": np.moveaxis(n, -1, 0), "normals_valid": v}


def _cached_depth(arr):
    import numpy as np

    arr = arr.astype(np.float32)
    valid = np.isfinite(arr) & (arr > 0)
    return {"depth": np.where(valid, arr, 0).astype(np.float32), "depth_valid": valid}


def _cached_labels(arr):
    import numpy as np

    return {"labels": arr.astype(np.int64)}


def _depth_suffix(meta: DatasetMeta) -> str:
    return {"npy": ".npy", "tiff": ".tif"}.get(meta.depth.encoding or "", ".png")


def _synthetic_labels(size, generator, spec=None):
    import torch

    n = (spec.num_classes if spec is not None else None) or 2
    return {"labels": torch.randint(0, n, (size, size), generator=generator)}


def _synthetic_depth(size, generator, spec=None):
    import torch

    return {"depth": 0.5 + 20 * torch.rand(1, size, size, generator=generator),
            "depth_valid": torch.ones(1, size, size, dtype=torch.bool)}


def _synthetic_normals(size, generator, spec=None):
    import torch

    n = torch.randn(3, size, size, generator=generator)
    n[2] = n[2].abs()
    return {"normals": n / n.norm(dim=0, keepdim=True).clamp_min(1e-6),
            "normals_valid": torch.ones(1, size, size, dtype=torch.bool)}


def _synthetic_image(size, generator, spec=None):
    import torch

    return {"image": torch.rand(3, size, size, generator=generator) * 2 - 1}


LABELS = Field(
    "labels", _read_labels, suffixes=(".png", ".bmp", ".tif", ".tiff"), dtype="int64", squeeze=True,
    probe=_probe("labels"), from_cache=_cached_labels, synthetic=_synthetic_labels,
    description="class ids (H, W) int64; ignore_index where unlabelled")
EDGES = Field(
    "edges", _read_edges, suffixes=(".png", ".jpg", ".jpeg", ".bmp"), resample="maxpool", binary=True,
    lossless=False, derive="edges-canny", probe=_probe("edges"), from_cache=_cached_edges,
    description="binary edges (1, H, W) in {0, 1}")
DEPTH = Field(
    "depth", _read_depth, suffixes=(".png", ".npy", ".tif", ".tiff"), masks=("depth_valid",),
    probe=_probe("depth"), from_cache=_cached_depth, synthetic=_synthetic_depth, partner_suffix=_depth_suffix,
    description="z-depth (1, H, W) in metres, 0 where unknown, with depth_valid")
NORMALS = Field(
    "normals", _read_normals, suffixes=(".png", ".npy"), channels=3, masks=("normals_valid",), vector=True,
    derive="normals-from-depth", probe=_probe("normals"), from_cache=_cached_normals, synthetic=_synthetic_normals,
    description="unit normals (3, H, W), +x right, +y up, +z to the camera; 0 where unknown, with normals_valid")
# the data set's photo: always read (it is the training target); a task lists it to encode from it
IMAGE = Field("image", None, suffixes=IMAGE_SUFFIXES, channels=3, resample="bicubic", clamp=(0.0, 1.0),
              lossless=False, synthetic=_synthetic_image, description="the photo (3, H, W)")
BUILTIN = {f.name: f for f in (LABELS, EDGES, DEPTH, NORMALS)}


# ------------------------------------------------------------------------------------ resolution


def registered_fields() -> dict[str, Field]:
    """Name -> Field for every field the registered tasks declare (the first declaration of a name wins)."""
    from piti_core.plugins import get_plugin_manager

    out: dict[str, Field] = {}
    for task in get_plugin_manager().tasks.values():
        for f in getattr(task, "fields", ()) or ():
            if isinstance(f, Field) and f.name != "image":
                out.setdefault(f.name, f)
    return out


def known_fields(extra: Iterable[Field] = ()) -> dict[str, Field]:
    """The fields a data set may hold: ``extra`` first, then those the registered tasks declare."""
    out = {f.name: f for f in extra if f.name != "image"}
    for name, f in registered_fields().items():
        out.setdefault(name, f)
    return out


def resolve_field(item: "Field | str") -> Field:
    """A Field object as given, or the field named ``item``: one a registered task declares, else a built-in."""
    if isinstance(item, Field):
        return item
    if item == "image":
        return IMAGE
    if item in BUILTIN:  # today's names keep their meaning, whatever is installed
        return BUILTIN[item]
    found = registered_fields().get(item)
    if found is None:
        valid = ", ".join(sorted({"image", *BUILTIN, *registered_fields()}))
        raise ValueError(f"unknown data-set field {item!r}; valid: {valid}")
    return found


def resolve_fields(items: Iterable["Field | str"]) -> tuple[Field, ...]:
    """:func:`resolve_field` of each item, without duplicates, in order."""
    out: dict[str, Field] = {}
    for item in items:
        f = resolve_field(item)
        if f.name in out and out[f.name] is not f:
            raise ValueError(f"two different fields are named '{f.name}'; rename one")
        out[f.name] = f
    return tuple(out.values())
