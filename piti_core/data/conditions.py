"""A user's condition file through the data layer: what a task's ``preprocess`` needs.

Files are decoded by :mod:`piti_core.data.readers` (the same checks and one-line errors as a data
set) and cropped/resized by :mod:`piti_core.data.transforms` (the same ``data.resize`` policy and
per-field resampling as training), so a condition given to ``piti sample`` looks like a training one.
Plugins import these through :mod:`piti_core.contract`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piti_core.errors import DataError


def is_pil(source: Any) -> bool:
    """Whether ``source`` is an in-memory PIL image (the demo and the Python API pass those)."""
    from PIL import Image

    return isinstance(source, Image.Image)


def as_path(source: "str | Path | Any", what: str) -> Path:
    """A condition file path; PIL images are accepted only where said so."""
    if is_pil(source):
        raise DataError(f"{what} must be given as a file path, not an in-memory image")
    return Path(source)


def load_rgb(source: "str | Path | Any"):
    """RGB uint8 (H, W, 3) from a path (checked like a data-set image) or a PIL image; transparent
    pixels composited over white."""
    import numpy as np

    from piti_core.data.readers import read_image, to_rgb

    if is_pil(source):
        return np.asarray(to_rgb(source), dtype=np.uint8)
    return read_image(Path(source))


def fit_condition(t, key: str, cfg):
    """A (C, H, W) field -> (C, S, S) at ``cfg.encoder.cond_size`` with the data set's crop and the
    resampling of the built-in field ``key`` (labels, edges, depth, normals, image)."""
    from piti_core.data.transforms import crop_box, resize_field

    top, left, h, w = crop_box(t.shape[-2], t.shape[-1], cfg.data.resize)
    return resize_field(key, t[..., top:top + h, left:left + w], cfg.encoder.cond_size)


def fit_field(field, t, cfg):
    """A (C, H, W) tensor of ``field`` (a :class:`~piti_core.data.fields.Field` or a field's name) ->
    (C, S, S) at ``cfg.encoder.cond_size``, cropped and resampled (and clamped only where the field
    says so) exactly as the data set delivers it to ``encode``; a 2-D tensor is taken as one channel."""
    from piti_core.data.fields import resolve_field
    from piti_core.data.transforms import crop_box, resize_field

    field = resolve_field(field)
    if t.ndim == 2:
        t = t[None]
    top, left, h, w = crop_box(t.shape[-2], t.shape[-1], cfg.data.resize)
    return resize_field(field.name, t[..., top:top + h, left:left + w], cfg.encoder.cond_size,
                        field.resampling(field.name), field.clamp)
