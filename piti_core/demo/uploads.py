"""What the demo accepts as a condition file: a known type (from its first bytes) of at most ``MAX_PIXELS``.

The size limit on the request counts bytes; a few hundred kilobytes of PNG can hold 10000×10000
pixels, which take gigabytes once decoded. So the pixel count is read from the file's header
(PIL's lazy ``Image.open``, numpy's ``.npy`` header) before anything is decoded, and a PNG's chunks
are checked (``verify``) so a truncated file is refused at once rather than failing in the queue.
"""

from __future__ import annotations

import io
import math
import warnings
from http import HTTPStatus

MAX_UPLOAD = 8 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"\x93NUMPY", ".npy"))
_KIND = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WebP", ".npy": ".npy"}


class BadRequest(Exception):
    """An HTTP error with a one-line message for the page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def upload_suffix(data: bytes) -> str:
    """The file type of an upload from its first bytes; BadRequest(415) when it is not a supported one."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                     "unsupported file type: upload a PNG, JPEG, WebP, BMP or TIFF image, or a .npy array")


def check_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    """The upload's suffix, once its type, header and pixel count are acceptable; BadRequest otherwise."""
    suffix = upload_suffix(data)
    if suffix == ".npy":
        _check_npy(data, max_pixels)
    else:
        _check_image(data, suffix, max_pixels)
    return suffix


def _too_large(what: str, pixels: int, max_pixels: int) -> BadRequest:
    side = math.isqrt(max_pixels)
    return BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                      f"image too large: {what} {pixels / 1e6:.1f} million pixels, the limit is "
                      f"{max_pixels / 1e6:.1f} million ({side}×{side}); upload a smaller image")


def _corrupt(suffix: str) -> BadRequest:
    return BadRequest(HTTPStatus.BAD_REQUEST, f"the uploaded {_KIND[suffix]} file is truncated or corrupt: "
                                              "save it again and upload that")


def _check_image(data: bytes, suffix: str, max_pixels: int) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(f"{width}×{height} =", width * height, max_pixels)
                image.verify()  # a PNG's chunks and checksums, without decoding the pixels
    except Image.DecompressionBombError:
        raise _too_large("over", 2 * Image.MAX_IMAGE_PIXELS, max_pixels) from None
    except BadRequest:
        raise
    except Exception:  # noqa: BLE001 - whatever PIL raises on a broken file, the answer is the same
        raise _corrupt(suffix) from None


def _check_npy(data: bytes, max_pixels: int) -> None:
    import numpy as np

    fmt = np.lib.format
    stream = io.BytesIO(data)
    try:
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        reader = readers.get(fmt.read_magic(stream))
        if reader is None:
            raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             "unsupported .npy version: save the array with numpy.save (format 1.0 or 2.0)")
        shape, _, dtype = reader(stream)
    except BadRequest:
        raise
    except Exception:  # noqa: BLE001 - a malformed header, whatever numpy says about it
        raise _corrupt(".npy") from None
    if dtype.hasobject:
        raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the .npy file holds Python objects (pickled data): "
                                                            "save a numeric array with numpy.save(..., allow_pickle=False)")
    elements = math.prod(shape)
    channels = min(shape[0], shape[-1]) if len(shape) == 3 and min(shape[0], shape[-1]) <= 4 else 1
    if elements // max(channels, 1) > max_pixels:
        raise _too_large(f"an array of shape {tuple(shape)} holds", elements // max(channels, 1), max_pixels)
    need, have = elements * dtype.itemsize, len(data) - stream.tell()
    if have < need:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"the uploaded .npy file is truncated: its header declares "
                                                 f"{need} bytes of data, the file holds {have}")
