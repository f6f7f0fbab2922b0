"""What the demo accepts as a condition file: one of the task's suffixes, its bytes matching that suffix.

The client names the file's suffix (``?suffix=.json``; without it the type is read from the first
bytes). Images and ``.npy`` arrays must be what their suffix says, of at most ``MAX_PIXELS``; text
formats (``.json`` ...) must be UTF-8; other suffixes are left to the task's ``preprocess``.

The size limit on the request counts bytes; a few hundred kilobytes of PNG can hold 10000×10000
pixels, which take gigabytes once decoded. So the pixel count is read from the file's header
(PIL's lazy ``Image.open``, numpy's ``.npy`` header) before anything is decoded, and a PNG's chunks
are checked (``verify``) so a truncated file is refused at once rather than failing in the queue.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from http import HTTPStatus

MAX_UPLOAD = 8 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"\x93NUMPY", ".npy"))
_KIND = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WebP", ".npy": ".npy"}
_ALIASES = {".jpeg": ".jpg", ".tiff": ".tif"}
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}", re.ASCII)
TEXT_SUFFIXES = frozenset({".json", ".txt", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".xml", ".svg"})


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


def claimed_suffix(value: str) -> str:
    """The suffix a client names for its upload (``.png``, ``.json``), in lower case; BadRequest(400) unless it is
    a dot and 1 to 8 letters or digits (it only ever names the stored file's suffix, never a path)."""
    suffix = value.strip().lower()
    if not _SUFFIX.fullmatch(suffix):
        shown = value[:20].encode("unicode_escape").decode("ascii")
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad suffix {shown!r}: send the file's suffix, a dot and 1 to 8 "
                                                 "letters or digits, such as suffix=.png")
    return suffix


def check_upload(data: bytes, max_pixels: int = MAX_PIXELS, *, suffix: str | None = None,
                 accepted: tuple[str, ...] | None = None, task: str = "this") -> str:
    """The suffix to store the upload under, once it is one of ``accepted`` (the task's suffixes; any when None)
    and the bytes are acceptable for it; BadRequest otherwise. ``suffix``: what the client claims (from
    :func:`claimed_suffix`); without it the type is read from the bytes."""
    if suffix is None:
        suffix = _sniffed(data, accepted, task)
        _check_content(data, suffix, max_pixels)
        return listed_suffix(suffix, accepted, task)
    stored = listed_suffix(suffix, accepted, task)
    kind = _ALIASES.get(suffix, suffix)
    if kind in _KIND:
        found = _type_of(data)
        if found != kind:
            what = f"a {_KIND[found]} file" if found else "of no type the demo knows"
            raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"the uploaded {suffix} file is not a {_KIND[kind]}: its first bytes are {what}; "
                             f"upload a real {suffix} file")
    _check_content(data, kind, max_pixels)
    return stored


def _type_of(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), None)


def _sniffed(data: bytes, accepted, task: str) -> str:
    """The type of an upload sent without its suffix, from its first bytes; BadRequest(415) when unknown."""
    found = _type_of(data)
    if found is not None:
        return found
    if accepted and any(_ALIASES.get(s, s) not in _KIND for s in accepted):
        raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                         f"unknown file type: send the file's suffix (?suffix=...); the {task} task reads "
                         f"{', '.join(accepted)}")
    return upload_suffix(data)  # raises the usual 415


def listed_suffix(suffix: str, accepted, task: str) -> str:
    """The entry of ``accepted`` that is ``suffix`` (.jpeg and .jpg are one); BadRequest(415) when there is none."""
    if accepted is None:
        return suffix
    for entry in accepted:
        if _ALIASES.get(entry, entry) == _ALIASES.get(suffix, suffix):
            return entry
    raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the {task} task does not read {suffix} files: "
                                                        f"it reads {', '.join(accepted)}")


def _check_content(data: bytes, suffix: str, max_pixels: int) -> None:
    if suffix == ".npy":
        _check_npy(data, max_pixels)
    elif suffix in _KIND:
        _check_image(data, suffix, max_pixels)
    elif suffix in TEXT_SUFFIXES:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"the uploaded {suffix} file is not UTF-8 text (byte "
                                                     f"{exc.start}): save it as UTF-8 and upload that") from None


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
