"""Helpers shared by the built-in task plugins: reading a user's condition file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piti_core.errors import DataError


def open_image(source: "str | Path | Any"):
    """A PIL image from a path or a PIL image; a clear DataError for a missing or broken file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source, "<image>"
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read (PNG, JPEG, TIFF ...)") from None
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    return img, str(path)


def fit_square(img, size: int, resample: str, mode: str = "keep-aspect"):
    """Resize to ``size``×``size``: short side + centre crop (``keep-aspect``) or ``squash``."""
    from PIL import Image

    method = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
              "box": Image.BOX}[resample]
    w, h = img.size
    if mode == "keep-aspect" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), method)
    return img
