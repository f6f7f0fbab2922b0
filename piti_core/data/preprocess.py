"""Conditions derived from other data: edges from photos, normals from depth, depth from disparity.

These are plain functions on numpy arrays at the file's resolution. :mod:`piti_core.data.cache`
registers the first two as preprocessors (``edges-canny``, ``normals-from-depth``) so that a data set
without an ``edges/`` or ``normals/`` folder can still feed the sketch or normal tasks; their outputs
are cached under PITI_HOME, never next to the user's files.

Camera convention (used everywhere in piti): +x right, +y up, +z toward the camera, i.e. the camera
looks along -z (OpenGL). Depth is the distance along the optical axis (z-depth), in metres. A pixel
(u, v) with depth d back-projects to X = (u - cx) d / f, Y = -(v - cy) d / f, Z = -d, with the focal
length f and the principal point (cx, cy) in pixels.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FOV_DEG = 60.0


def shrink_to_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Downscale an RGB uint8 image (antialiased bicubic) so that its short side is ``short_side``."""
    h, w = image.shape[:2]
    if not short_side or min(h, w) <= short_side:
        return image
    from PIL import Image

    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, reducing_gap=None))


def canny_edges(image: np.ndarray, *, low: float = 0.1, high: float = 0.2, sigma: float = 1.0,
                kernel: int = 5, short_side: int = 0) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> edges uint8 (h, w) in {0, 1}, with :func:`kornia.filters.canny`.

    With ``short_side`` the photo is first shrunk so that its short side has that many pixels (the
    data set passes the condition size), so the edges have the density of a sketch drawn at the size
    they are used at; the loader scales them back (nearest) onto the photo.

    ``low`` / ``high`` are the hysteresis thresholds on the gradient magnitude of the [0, 1]
    grayscale image after a Gaussian blur of ``sigma`` (kernel ``kernel`` x ``kernel``). Kornia does
    the blur, gradients, non-maximum suppression and double threshold; the hysteresis (keep weak edges
    8-connected to a strong one) is done with connected components, which gives kornia's
    ``hysteresis=True`` result exactly but ~30x faster on a CPU.
    """
    import kornia
    import torch
    from scipy import ndimage

    image = shrink_to_short_side(image, short_side)
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        _, edges = kornia.filters.canny(x, low_threshold=low, high_threshold=high, kernel_size=(kernel, kernel),
                                        sigma=(sigma, sigma), hysteresis=False)  # 0 / 0.5 weak / 1 strong
    edges = edges[0, 0].numpy()
    parts, n = ndimage.label(edges > 0, structure=np.ones((3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(parts[edges >= 1])] = True
    keep[0] = False
    return keep[parts].astype(np.uint8)


def focal_from_fov(width: int, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Focal length in pixels of a pinhole camera with horizontal field of view ``fov_deg``."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


def backproject(depth: np.ndarray, focal: float, cx: float | None = None, cy: float | None = None) -> np.ndarray:
    """z-depth (H, W) -> camera-space points (H, W, 3) in the +x right, +y up, +z to camera frame."""
    h, w = depth.shape
    cx = (w - 1) / 2 if cx is None else cx
    cy = (h - 1) / 2 if cy is None else cy
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d = depth.astype(np.float64)
    return np.stack([(u - cx) * d / focal, -(v - cy) * d / focal, -d], axis=-1)


def normals_from_depth(depth: np.ndarray, *, focal: float | None = None, fov_deg: float | None = None,
                       cx: float | None = None, cy: float | None = None) -> np.ndarray:
    """z-depth (H, W) in metres -> unit normals (H, W, 3) facing the camera, zero where unknown.

    Pixels with depth <= 0 or NaN are invalid, as is every pixel next to one (its finite
    differences would cross the hole). The normal is the cross product of the central differences of
    the back-projected points along the image rows and columns (one-sided at the border), oriented
    toward the camera. ``focal`` is in pixels at this resolution; without it, a horizontal field of
    view of ``fov_deg`` (default 60 degrees) is assumed.
    """
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    f = float(focal) if focal else focal_from_fov(w, fov_deg or DEFAULT_FOV_DEG)
    valid = np.isfinite(depth) & (depth > 0)
    pts = backproject(np.where(valid, depth, np.nan), f, cx, cy)
    if h < 2 or w < 2:
        return np.zeros((h, w, 3), np.float32)
    d_du = np.gradient(pts, axis=1)
    d_dv = np.gradient(pts, axis=0)
    n = np.cross(d_dv, d_du)  # fronto-parallel plane -> (0, 0, +1)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = valid & np.isfinite(norm[..., 0]) & (norm[..., 0] > 0)  # central differences skip the pixel itself
    n = np.where(ok[..., None], n / np.where(ok[..., None], norm, 1.0), 0.0)
    return n.astype(np.float32)


def depth_from_disparity(disparity: np.ndarray, *, focal: float, baseline: float, doffs: float = 0.0) -> np.ndarray:
    """Stereo disparity (pixels) -> z-depth = focal * baseline / (disparity + doffs), NaN where unknown.

    ``focal`` in pixels, ``baseline`` in metres (the result is in metres), ``doffs`` the difference of
    the two principal points' x (Middlebury's "doffs"). Non-finite or non-positive disparities give NaN.
    """
    disp = np.asarray(disparity, dtype=np.float64) + doffs
    ok = np.isfinite(disp) & (disp > 0)
    return np.where(ok, focal * baseline / np.where(ok, disp, 1.0), np.nan).astype(np.float32)


def encode_normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> uint8 RGB (n + 1) / 2 * 255; zero vectors (invalid) become black."""
    n = np.asarray(normals, dtype=np.float64)
    rgb = np.clip(np.round((n + 1) * 127.5), 0, 255).astype(np.uint8)
    rgb[np.linalg.norm(n, axis=-1) < 0.5] = 0
    return rgb
