"""Plain records shared by the data layer: a problem found in a data set, one sample, the metadata.

Nothing here reads files; see :mod:`piti_core.data.formats` (layouts), :mod:`piti_core.data.readers`
(decoding) and :mod:`piti_core.data.index` (splits and subsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# The condition kinds a data set may hold besides its images, in a fixed order.
KINDS = ("labels", "edges", "depth", "normals")

_UNIT_TO_METRES = {"m": 1.0, "cm": 0.01, "mm": 0.001}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: ``str(problem)`` is the one-line message shown to users."""

    file: Path
    message: str  # "what is wrong; what to do"
    stem: str | None = None  # the sample it breaks (None: not tied to one sample)

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": str(self.file), "message": self.message, "stem": self.stem}


@dataclass(frozen=True)
class Sample:
    """One image with its condition files (kind -> path) and its split."""

    stem: str
    image: Path
    conditions: Mapping[str, Path] = field(default_factory=dict)
    split: str = "train"
    caption: str = ""


@dataclass(frozen=True)
class DepthSpec:
    """How depth files are stored (``dataset.json`` ``"depth"``).

    ``encoding`` None means "by file extension" (.png: 16-bit PNG, .npy, .tif/.tiff: float TIFF).
    The value read from the file times ``scale`` is in ``units`` (m, cm, mm); the loader returns
    metres. ``scale`` None means 0.001 for 16-bit PNG (millimetres, as Kinect/NYU) and 1 for float
    files. ``invalid`` is the raw value that marks pixels without depth (0), or ``"nan"`` when float
    files mark them with NaN.
    """

    encoding: str | None = None
    scale: float | None = None
    units: str = "m"
    invalid: float | str = 0.0

    def to_metres(self, encoding: str) -> float:
        scale = self.scale if self.scale is not None else (0.001 if encoding == "png16" else 1.0)
        return float(scale) * _UNIT_TO_METRES[self.units]


@dataclass(frozen=True)
class DatasetMeta:
    """What a data set declares about itself (``dataset.json``) or what its format implies.

    ``label_lut`` maps raw label values (0..255) to class ids, e.g. ADE20K's shift (raw 0 -> ignore,
    raw k -> k-1); None means raw value = class id. ``num_classes`` None means unknown (ids are then
    not range-checked).
    """

    name: str = ""
    format: str = "folder"
    classes: tuple[str, ...] = ()
    num_classes: int | None = None
    ignore_index: int = 255
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_color: tuple[int, int, int] | None = None
    label_lut: tuple[int, ...] | None = None
    depth: DepthSpec = DepthSpec()
    normals_convention: str = "opengl"  # "opengl": +x right, +y up, +z toward the camera; or "opencv"
    focal: float | None = None  # camera focal length in pixels at the files' resolution
    fov_deg: float | None = None  # horizontal field of view, used when focal is not given
    splits: Mapping[str, tuple[str, ...]] | None = None
    extra: Mapping[str, object] = field(default_factory=dict)  # other dataset.json keys, kept as-is

    def class_name(self, i: int) -> str:
        return self.classes[i] if 0 <= i < len(self.classes) else str(i)
