"""Edge maps of the toy world: object / material outlines, depth jumps and strong image edges.

An edge pixel is 255, every other pixel 0. Three sources are OR-ed, each about one pixel wide:

* segment boundaries: neighbours with different segments (sky, each ground material, each object
  instance), marked on the *nearer* side so outlines hug the occluding surface;
* depth discontinuities inside a segment (a tree's canopy over its trunk, a roof's eave over a
  wall): a jump of inverse depth much larger than the jumps next to it;
* image edges: Sobel gradient of the luminance, thinned by non-maximum suppression and kept above
  a fixed threshold (shadow borders, stripes, window frames).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
SOBEL_THRESHOLD = 0.45  # gradient magnitude of luminance in [0, 1] (a sharp step of ~0.11)
DEPTH_JUMP_RATIO = 3.0  # a jump of inverse depth this many times its neighbours' is a discontinuity
DEPTH_JUMP_MIN = 0.004  # ... and at least this large (1/m)


def _boundaries(seg: np.ndarray, depth: np.ndarray) -> np.ndarray:
    far = np.where(depth > 0, depth, np.inf).astype(F32)
    disp = np.where(depth > 0, F32(1) / np.maximum(depth, F32(1e-6)), F32(0))
    edges = np.zeros(seg.shape, bool)
    for axis in (1, 2):  # neighbours along rows, then along columns (that axis moved last)
        s, f, q, e = (np.moveaxis(a, axis, -1) for a in (seg, far, disp, edges))
        jump = np.abs(q[..., 1:] - q[..., :-1])
        padded = np.pad(jump, [(0, 0), (0, 0), (1, 1)], mode="edge")
        neighbours = padded[..., :-2] + padded[..., 2:]
        depth_jump = (jump > F32(DEPTH_JUMP_RATIO / 2) * neighbours) & (jump > F32(DEPTH_JUMP_MIN))
        cut = (s[..., 1:] != s[..., :-1]) | depth_jump
        first_nearer = f[..., :-1] <= f[..., 1:]
        e[..., :-1] |= cut & first_nearer  # e is a view: this writes into ``edges``
        e[..., 1:] |= cut & ~first_nearer
    return edges


def _sobel_nms(image: np.ndarray) -> np.ndarray:
    lum = (image[..., 0] * F32(0.299 / 255) + image[..., 1] * F32(0.587 / 255) + image[..., 2] * F32(0.114 / 255))
    p = np.pad(lum, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = lum.shape[1:]
    s = lambda dy, dx: p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731  shifted view
    gx = (s(-1, 1) + F32(2) * s(0, 1) + s(1, 1)) - (s(-1, -1) + F32(2) * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + F32(2) * s(1, 0) + s(1, 1)) - (s(-1, -1) + F32(2) * s(-1, 0) + s(-1, 1))
    mag = np.sqrt(gx * gx + gy * gy)
    m = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    n = lambda dy, dx: m[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    ax, ay = np.abs(gx), np.abs(gy)
    horizontal, vertical = ax > F32(2.4142) * ay, ay > F32(2.4142) * ax
    same_sign = (gx * gy) > 0  # gradient along the main diagonal (rows grow downward)
    before = np.select([horizontal, vertical, same_sign], [n(0, -1), n(-1, 0), n(-1, -1)], n(-1, 1))
    after = np.select([horizontal, vertical, same_sign], [n(0, 1), n(1, 0), n(1, 1)], n(1, -1))
    return (mag > SOBEL_THRESHOLD) & (mag >= before) & (mag > after)


def edge_map(image: np.ndarray, seg: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Edges (B, H, W) uint8 in {0, 255} of images (B, H, W, 3) uint8 with segment ids (B, H, W)
    and depth (B, H, W) in metres (0: sky)."""
    edges = _boundaries(seg, depth) | _sobel_nms(image)
    return edges.astype(np.uint8) * np.uint8(255)
