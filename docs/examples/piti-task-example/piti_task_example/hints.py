"""The ``hints`` field: a few colour hints per photo, read from ``hints/<stem>.json``::

    {"width": 640, "height": 480, "points": [{"x": 12, "y": 40, "rgb": [200, 30, 30]}, ...]}

``x``, ``y`` are pixel coordinates in the photo (``width`` x ``height``, which must be the photo's
size). A file becomes a sparse ``(4, H, W)`` map: premultiplied RGB in [0, 1] and the coverage (1 at
a hint). Area resampling averages both, so a shrunk hint keeps its colour (RGB / coverage). A data
set without a ``hints/`` folder (the toy world) gets hints derived from its photos instead: a few
of each photo's own pixels, chosen from a hash of the photo, cached under PITI_HOME.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from piti_core.contract import DataError, Field, Preprocessor, register_preprocessor

MAX_SIDE = 8192  # piti's bound on a data-set image's side


def _int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_hints(path) -> tuple[int, int, list]:
    """(width, height, [(x, y, rgb), ...]) of a hints file; ValueError (one sentence) when it is not one."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object with width, height and points")
    w, h, points = doc.get("width"), doc.get("height"), doc.get("points")
    if not (_int(w, 1, MAX_SIDE) and _int(h, 1, MAX_SIDE)):
        raise ValueError(f"width and height must be integers in 1..{MAX_SIDE}")
    if not isinstance(points, list):
        raise ValueError("points must be a list of {x, y, rgb}")
    for i, p in enumerate(points):
        p = p if isinstance(p, dict) else {}
        rgb = p.get("rgb")
        if not (_int(p.get("x"), 0, w - 1) and _int(p.get("y"), 0, h - 1) and isinstance(rgb, list)
                and len(rgb) == 3 and all(_int(c, 0, 255) for c in rgb)):
            raise ValueError(f"points[{i}] must be {{x: 0..{w - 1}, y: 0..{h - 1}, rgb: [r, g, b] in 0..255}}")
    return w, h, [(p["x"], p["y"], p["rgb"]) for p in points]


def render(width: int, height: int, points) -> np.ndarray:
    """Points -> the sparse (4, height, width) float32 map: RGB in [0, 1] and coverage 1 at each point."""
    hints = np.zeros((4, height, width), np.float32)
    for x, y, rgb in points:
        hints[:3, y, x] = np.asarray(rgb, np.float32) / 255
        hints[3, y, x] = 1.0
    return hints


def read_hints(path) -> np.ndarray:
    return render(*parse_hints(path))


def probe_hints(path, meta) -> tuple[int, int]:
    """(width, height) for the data set's size check, without rendering (a probe words its own errors)."""
    try:
        w, h, _ = parse_hints(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as hints ({exc}); fix or replace the file") from None
    return w, h


def hints_from_photo(photo: np.ndarray, max_points: int = 8) -> np.ndarray:
    """Photo (H, W, 3) uint8 -> hints at 0..max_points of its own pixels (how many and where: from a hash
    of the photo, so the cached copy and a recomputation agree)."""
    rng = np.random.default_rng(zlib.crc32(photo.tobytes()))
    h, w = photo.shape[:2]
    n = int(rng.integers(0, max_points + 1))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    return render(w, h, [(x, y, photo[y, x]) for x, y in zip(xs, ys)])


def hints_file(photo: Path) -> Path | None:
    """The hints of a user's photo: ``hints/<stem>.json`` in its folder, or in the data set's ``hints/``
    folder for ``ROOT/images/<stem>.png``; None when there is none."""
    for folder in (photo.parent, photo.parent.parent):
        path = folder / "hints" / f"{photo.stem}.json"
        if path.is_file():
            return path
    return None


def synthetic_hints(size: int, generator, spec=None) -> dict:
    """Random but valid hints for the contract tests: four 3x3 patches of one random colour each."""
    import torch

    hints = torch.zeros(4, size, size)
    for y, x in torch.randint(0, size - 2, (4, 2), generator=generator).tolist():
        hints[:3, y:y + 3, x:x + 3] = torch.rand(3, 1, 1, generator=generator)
        hints[3, y:y + 3, x:x + 3] = 1.0
    return {"hints": hints}


# a re-import (a copy loaded with -p) replaces its own registration
register_preprocessor(Preprocessor(
    "colorize-hints", "hints", "image", hints_from_photo, "1", {"max_points": 8},
    "colour hints at a few pixels of the photo (data sets without a hints/ folder)"), replace=True)

HINTS = Field("hints", read_hints, folder="hints", suffixes=(".json",), channels=4, resample="area",
              derive="colorize-hints", probe=probe_hints, synthetic=synthetic_hints,
              description="colour hints (4, H, W): premultiplied RGB in [0, 1] and coverage")
