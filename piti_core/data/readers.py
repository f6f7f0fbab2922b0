"""Decode one image or condition file into a numpy array, or raise a one-line DataError naming it.

Arrays come back at the file's own resolution:

* image   uint8 (H, W, 3) RGB (grayscale / palette / CMYK / 1-bit / 16-bit files are converted; COCO has
          some). Transparent pixels (an alpha channel, a transparent palette entry or tRNS colour) are
          composited over white, as a viewer shows them: a drawing of black strokes on a transparent
          canvas is black strokes on white, not a black page.
* labels  int64 (H, W) class ids after the data set's mapping (ADE20K: raw 0 -> 255, raw k -> k-1);
          ids >= num_classes other than ``ignore_index`` are an error. Single-channel PNGs (L, P,
          16-bit) hold ids; RGB PNGs are mapped through ``dataset.json`` "palette". Transparency never
          invents a class: a palette PNG's transparent entry keeps its index (the index is the id), an
          alpha channel that is fully opaque is dropped, and a label map with transparent pixels is an
          error (a transparent pixel has no class to give).
* edges   bool (H, W): single-channel, value >= 128 is an edge ("1"-mode PNGs work too)
* depth   float32 (H, W) in metres, 0 where invalid, plus bool ``depth_valid``. Integer files (16-bit
          PNG/TIFF, int .npy) default to millimetres (scale 0.001); float files (.npy, float TIFF) to
          metres. The raw ``depth.invalid`` value (default 0) marks missing depth; NaN/inf is an error
          unless ``depth.invalid`` is "nan".
* normals float32 (H, W, 3) unit vectors in the camera frame (+x right, +y up, +z toward the camera),
          zero where invalid, plus bool ``normals_valid``. RGB PNGs store (n + 1) / 2 * 255.

Every file's size is checked from its header before decoding: more than :data:`MAX_PIXELS` pixels
(a decompression bomb: a few hundred KB of PNG that decodes to gigabytes) is a one-line error.

Nothing here writes anywhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from piti_core.data.records import DatasetMeta, Problem, Sample
from piti_core.errors import DataError

_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_IMAGE_MODES = ("RGB", "L", "P", "1", "CMYK", "YCbCr", "RGBA", "LA", "PA", *_INT_MODES)
MAX_PIXELS = 8192 * 8192  # per file; far above any model input, far below what exhausts memory


def _err(path: Path, message: str) -> DataError:
    """A one-line DataError "<file>: <problem; what to do>" that also keeps the parts (see problem_of)."""
    exc = DataError(f"{path}: {message}")
    exc.file, exc.problem = Path(path), message
    return exc


def problem_of(exc: DataError, file: Path, stem: str | None = None) -> Problem:
    """The :class:`Problem` behind a DataError raised here (``file`` when it names none)."""
    return Problem(getattr(exc, "file", Path(file)), getattr(exc, "problem", str(exc)), stem)


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), refusing more than :data:`MAX_PIXELS` pixels before any decoding."""
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: piti's bound below replaces it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise _too_large(path, f"has more than {MAX_PIXELS:,} pixels (piti's limit per file; a decompression bomb "
                               "or a far too large picture); downscale it") from None
    except UnidentifiedImageError:
        raise _err(path, "not an image file PIL can read; replace it with a PNG/JPEG or remove it") from None
    except FileNotFoundError:
        raise _err(path, "file not found; it was listed but has gone (rerun after the copy finishes)") from None
    except OSError as exc:
        raise _err(path, f"cannot be read ({exc.strerror or exc}); check the file and its permissions") from None
    try:
        _check_pixels(path, *img.size)
    except DataError:
        img.close()
        raise
    return img


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse an empty picture or one over :data:`MAX_PIXELS` pixels (known from the header)."""
    if width < 1 or height < 1:
        raise _err(path, f"is {width}x{height}: an empty picture; re-export the file or remove it")
    if width * height > MAX_PIXELS:
        raise _too_large(path, f"is {width}x{height} = {width * height:,} pixels, over piti's limit of "
                               f"{MAX_PIXELS:,} pixels per file (a decompression bomb, or far larger than any model "
                               "input); downscale it")


def _too_large(path: Path, message: str) -> DataError:
    """The DataError of a file over the pixel bound; marked so that no fallback decoder tries it."""
    exc = _err(path, message)
    exc.too_large = True
    return exc


def _load(path: Path, img: Image.Image) -> Image.Image:
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise _err(path, f"truncated or corrupt image ({exc}); re-export the file or remove it") from None
    return img


def _channels(img: Image.Image) -> int:
    return len(img.getbands())


def _check_mode(kind: str, path: Path, img: Image.Image, meta: DatasetMeta) -> None:
    mode, c = img.mode, _channels(img)
    if kind == "image" and mode not in _IMAGE_MODES:
        raise _err(path, f"unsupported image mode {mode}; save the image as 8-bit RGB PNG/JPEG")
    if kind == "labels":
        if mode in ("RGBA", "LA"):  # accepted when fully opaque; read_labels checks the alpha
            mode, c = mode[:-1], c - 1
        if c == 3 and mode == "RGB" and meta.palette is None:
            raise _err(path, "has 3 channels (RGB) but labels must be one channel of class ids (mode L); convert "
                             "it, or give dataset.json a \"palette\" for colour label maps")
        if c not in (1, 3) or (c == 3 and mode != "RGB") or mode == "F":
            rgb = " or an RGB PNG of palette colours" if meta.palette is not None else ""
            raise _err(path, f"has {c} channel(s) ({mode}); labels must be a single-channel PNG of class ids{rgb}")
    if kind == "edges" and (c != 1 or mode not in ("1", "L", "P")):
        raise _err(path, f"has {c} channel(s) ({mode}); edges must be a single-channel PNG, 0 = background, "
                         "255 = edge")
    if kind == "depth":
        if c != 1:
            raise _err(path, f"has {c} channels ({mode}); depth must be one channel (a colour-mapped depth "
                             "picture cannot be inverted): use a 16-bit PNG, float .npy or float TIFF")
        if mode in ("L", "P", "1"):
            raise _err(path, "is an 8-bit image; depth must be a 16-bit PNG (x scale = metres), a float .npy or "
                             "a float TIFF")
    if kind == "normals" and (c != 3 or mode != "RGB"):
        raise _err(path, f"has {c} channel(s) ({mode}); normals must be an RGB PNG storing (n + 1) / 2 * 255 "
                         "or a float (H, W, 3) .npy")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return tuple(shape), np.dtype(dtype)
    except (ValueError, OSError, SyntaxError) as exc:
        raise _err(path, f"not a .npy array file ({exc}); save it with numpy.save") from None


def _npy_hw(kind: str, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    """(width, height) of a .npy condition from its header, checking its type, shape and size."""
    w, h = _npy_shape_hw(kind, path, shape, dtype)
    _check_pixels(path, w, h)
    return w, h


def _npy_shape_hw(kind: str, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind not in "iuf":
        raise _err(path, f"holds {dtype} values; save a numeric array (float32) with numpy.save")
    if kind == "depth":
        dims = [d for d in shape if d != 1] if len(shape) == 3 else list(shape)
        if len(shape) not in (2, 3) or len(dims) != 2:
            raise _err(path, f"has shape {shape}; depth .npy must be (H, W)")
        h, w = shape[-2:] if len(shape) == 3 and shape[0] == 1 else shape[:2]
        return w, h
    if kind == "normals":
        if len(shape) == 3 and shape[-1] == 3:
            return shape[1], shape[0]
        if len(shape) == 3 and shape[0] == 3:
            return shape[2], shape[1]
        raise _err(path, f"has shape {shape}; normals .npy must be (H, W, 3)")
    raise _err(path, f"{kind} cannot be a .npy file; save it as PNG")


def probe(kind: str, path: Path, meta: DatasetMeta) -> tuple[int, int]:
    """(width, height) of a file from its header, checking its type and channel count (no decoding)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        shape, dtype = _npy_header(path)
        return _npy_hw(kind, path, shape, dtype)
    with _open(path) as img:
        _check_mode(kind, path, img, meta)
        return img.size


# ------------------------------------------------------------------------------------ readers


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file, transparent pixels composited over white."""
    path = Path(path)
    with _open(path) as img:
        _check_mode("image", path, img, DatasetMeta())
        _load(path, img)
        if img.mode in _INT_MODES:
            arr = np.asarray(img, dtype=np.float64)
            arr = (255 * arr / max(arr.max(), 1)).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=2)
        return to_rgb(img)


def has_transparency(img: Image.Image) -> bool:
    """Whether a PIL image can show through: an alpha channel, or a transparent palette entry / colour."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a PIL image as a viewer shows it on a white page: transparent and
    half-transparent pixels composited over white (drawing apps export strokes on a transparent canvas)."""
    if not has_transparency(img):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()


_NOT_IN_PALETTE = 'is not in the dataset.json palette; fix the label map or add the colour (or "ignore_color")'
_OUTSIDE_CLASSES = "fix the label map or the classes in dataset.json"


def map_colours(path: Path, rgb: np.ndarray, meta: DatasetMeta, *, not_in_palette: str = _NOT_IN_PALETTE) -> np.ndarray:
    """RGB (H, W, 3) -> class ids through ``meta.palette``; an unknown colour is an error ending in
    ``not_in_palette`` (what to do; a task reading a user's file words it for its own palette)."""
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(meta.palette)}
    if meta.ignore_color is not None:
        r, g, b = meta.ignore_color
        table[(r << 16) | (g << 8) | b] = meta.ignore_index
    uniq, inv = np.unique(key, return_inverse=True)
    ids = np.empty(len(uniq), dtype=np.int64)
    for j, k in enumerate(uniq.tolist()):
        if k not in table:
            n = int((key == k).sum())
            raise _err(path, f"colour ({k >> 16}, {(k >> 8) & 255}, {k & 255}) at {n} pixel(s) {not_in_palette}")
        ids[j] = table[k]
    return ids[inv].reshape(key.shape)


def read_labels(path: Path, meta: DatasetMeta, *, not_in_palette: str = _NOT_IN_PALETTE,
                outside_classes: str = _OUTSIDE_CLASSES) -> np.ndarray:
    """Class ids of a label PNG; the keywords word the fix of an unknown colour / an id out of range."""
    path = Path(path)
    with _open(path) as img:
        _check_mode("labels", path, img, meta)
        _load(path, img)
        arr = opaque_labels(path, np.asarray(img), img.mode)
        if arr.ndim == 3:
            return map_colours(path, arr, meta, not_in_palette=not_in_palette)
        raw = arr.astype(np.int64)
    if meta.label_lut is not None:
        lut = np.asarray(meta.label_lut, dtype=np.int64)
        bad = raw[(raw < 0) | (raw >= len(lut))]
        bad = bad if bad.size else raw[lut[raw] < 0]
        if bad.size:
            top = int(np.nonzero(lut >= 0)[0].max())
            raise _err(path, f"raw label value {int(bad.max())} is outside 0-{top} of {meta.name}; "
                             "is this the right data set / --format?")
        raw = lut[raw]
    if meta.num_classes is not None:
        out = (raw >= meta.num_classes) & (raw != meta.ignore_index)
        if out.any():
            v = int(raw[out].max())
            raise _err(path, f"class id {v} is outside the {meta.num_classes} classes (ids 0-{meta.num_classes - 1},"
                             f" ignore {meta.ignore_index}); {outside_classes}")
    return raw


def opaque_labels(path: Path, arr: np.ndarray, mode: str) -> np.ndarray:
    """A label array without its alpha channel (RGBA -> RGB, LA -> L), or an error naming ``path`` when a
    pixel is transparent: compositing over a colour would invent a class. Other modes pass unchanged
    (a palette PNG's transparent entry keeps its index: the index is the class id)."""
    if mode not in ("RGBA", "LA"):
        return arr
    alpha = arr[..., -1]
    if (alpha < 255).any():
        n = int((alpha < 255).sum())
        raise _err(path, f"has {n} transparent pixel(s); a label map gives every pixel a class: paint them with a "
                         "class colour and save the file without transparency")
    return arr[..., :3] if mode == "RGBA" else arr[..., 0]


def read_edges(path: Path) -> np.ndarray:
    path = Path(path)
    with _open(path) as img:
        _check_mode("edges", path, img, DatasetMeta())
        _load(path, img)
        return np.asarray(img.convert("L")) >= 128


def _read_depth_raw(path: Path) -> tuple[np.ndarray, str]:
    """(raw values, encoding) where encoding is "png16" for integer files and "float" otherwise."""
    if path.suffix.lower() == ".npy":
        shape, dtype = _npy_header(path)
        _npy_hw("depth", path, shape, dtype)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise _err(path, f"cannot load the .npy array ({exc}); save it again with numpy.save") from None
        arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr.reshape(arr.shape[:2])
        return arr, ("png16" if dtype.kind in "iu" else "float")
    try:
        with _open(path) as img:
            _check_mode("depth", path, img, DatasetMeta())
            _load(path, img)
            arr = np.asarray(img)
    except DataError as exc:
        if getattr(exc, "too_large", False):
            raise
        arr = _tifffile(path)  # float64 / compressed TIFFs PIL cannot open
        if arr is None:
            raise
        if arr.ndim != 2:
            raise _err(path, f"has shape {arr.shape}; a depth TIFF must hold one (H, W) channel") from None
    return arr, ("png16" if arr.dtype.kind in "iu" else "float")


def _tifffile(path: Path) -> np.ndarray | None:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(int(d) for d in tif.series[0].shape)
            if int(np.prod(shape)) <= MAX_PIXELS:  # from the header, before decoding
                return np.squeeze(tif.asarray())
    except Exception:  # noqa: BLE001 - any failure: keep PIL's message
        return None
    raise _too_large(path, f"holds {int(np.prod(shape)):,} values (shape {shape}), over piti's limit of "
                           f"{MAX_PIXELS:,} pixels per file; downscale it")


def read_depth(path: Path, meta: DatasetMeta) -> tuple[np.ndarray, np.ndarray]:
    """(depth in metres with 0 where invalid, valid mask)."""
    path = Path(path)
    raw, enc = _read_depth_raw(path)
    raw = raw.astype(np.float64)
    spec = meta.depth
    finite = np.isfinite(raw)
    if spec.invalid == "nan":
        if np.isinf(raw).any():
            raise _err(path, f"holds {int(np.isinf(raw).sum())} inf value(s); mark pixels without depth with NaN")
        valid = finite
    else:
        if not finite.all():
            raise _err(path, f"holds {int((~finite).sum())} NaN/inf value(s); mark pixels without depth with "
                             f"{spec.invalid:g} (dataset.json depth.invalid) instead")
        valid = raw != spec.invalid
    if (raw[valid] < 0).any():
        raise _err(path, f"holds negative depth (min {raw[valid].min():g}); depth must be >= 0")
    depth = np.where(valid, raw, 0.0) * spec.to_metres(enc)
    return depth.astype(np.float32), valid


def decode_normals(arr: np.ndarray, convention: str = "opengl") -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB or float (H, W, 3) -> (unit normals, zero where invalid; valid mask)."""
    n = arr.astype(np.float32)
    if arr.dtype == np.uint8:
        n = n / 127.5 - 1.0
    elif arr.dtype.kind in "iu":
        n = n / (np.iinfo(arr.dtype).max / 2.0) - 1.0
    n = np.where(np.isfinite(n), n, 0.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = (norm[..., 0] > 0.5) & (norm[..., 0] < 1.5)
    n = np.where(valid[..., None], n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
    if convention == "opencv":  # +y down, +z away from the camera -> ours
        n[..., 1:] *= -1
    return n, valid


def read_normals(path: Path, meta: DatasetMeta) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if path.suffix.lower() == ".npy":
        shape, dtype = _npy_header(path)
        _npy_hw("normals", path, shape, dtype)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise _err(path, f"cannot load the .npy array ({exc}); save it again with numpy.save") from None
        if arr.shape[-1] != 3:
            arr = np.moveaxis(arr, 0, -1)
    else:
        with _open(path) as img:
            _check_mode("normals", path, img, meta)
            _load(path, img)
            arr = np.asarray(img)
    return decode_normals(arr, meta.normals_convention)


def _field(kind):
    from piti_core.data.fields import resolve_field

    return resolve_field(kind)


def read_condition(kind, path: Path, meta: DatasetMeta) -> dict[str, np.ndarray]:
    """The arrays of one file of field ``kind`` (a name or a Field): e.g. {"labels"}, {"depth", "depth_valid"};
    every array (H, W) or channels-first (C, H, W)."""
    return _field(kind).load(Path(path), meta)


def nearest_to(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes of ``arr`` to (height, width)."""
    h, w = arr.shape[:2]
    if (h, w) == (height, width):
        return arr
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return arr[rows][:, cols]


def read_cached(kind, path: Path, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """A field computed by a preprocessor (see :mod:`piti_core.data.cache`), stored as .npy.

    ``size`` (width, height): scale it onto the photo (nearest) when it was computed at another size.
    """
    arr = np.load(path, allow_pickle=False)
    if size is not None and (size[1], size[0]) not in (tuple(arr.shape[:2]), tuple(arr.shape[-2:])):
        arr = nearest_to(arr, size[1], size[0])
    return _field(kind).cached(arr)


def check_sizes(sample: Sample, sizes: Mapping[str, tuple[int, int]], image_size: tuple[int, int]) -> None:
    """Raise if a condition (kind -> (w, h)) differs in size from its image."""
    for kind, (w, h) in sizes.items():
        if (w, h) != tuple(image_size):
            path = sample.conditions.get(kind, kind)
            raise _err(path, f"is {w}x{h} but its image {sample.image.name} is {image_size[0]}x{image_size[1]}; "
                             f"image and {kind} must have the same size (re-export the pair)")


def probe_sample(sample: Sample, kinds, meta: DatasetMeta) -> None:
    """Header-level checks of one sample: every file opens, has the right channels and the same size.
    ``kinds``: field names or Field objects."""
    size = probe("image", sample.image, meta)
    fields = [_field(k) for k in kinds]
    check_sizes(sample, {f.name: f.probe_size(sample.conditions[f.name], meta)
                         for f in fields if f.name in sample.conditions}, size)


def read_sample(sample: Sample, kinds, meta: DatasetMeta, derived: Mapping[str, Path] | None = None) -> dict:
    """Decode the image and the fields ``kinds`` (names or Field objects) of one sample (derived ones
    from ``derived``)."""
    out: dict = {"image": read_image(sample.image)}
    h, w = out["image"].shape[:2]
    sizes = {}
    for f in (_field(k) for k in kinds):
        if derived and f.name in derived:
            arrays = read_cached(f, derived[f.name], (w, h))
        elif f.name in sample.conditions:
            arrays = f.load(sample.conditions[f.name], meta)
        else:
            raise _err(sample.image, f"has no {f.name} file; add it or pass --skip-bad to skip such images")
        sizes[f.name] = arrays[f.name].shape[-1], arrays[f.name].shape[-2]
        out.update(arrays)
    check_sizes(sample, sizes, (w, h))
    return out
