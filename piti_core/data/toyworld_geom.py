"""Ray casting for the toy world, vectorised over a batch of scenes and all their pixels.

Arrays are float32 and laid out ``(B, N)`` (scene, ray) or ``(B, N, P)`` (scene, ray, part). Parts
of one kind are padded to the largest count in the batch and masked with ``valid``. Bounding
spheres pick the (ray, part) pairs worth intersecting — screen rectangles for primary rays, a test
in the light's plane for shadow rays; only those pairs are gathered into flat arrays and intersected
exactly. Every operation is elementwise or a reduction over the part
axis, so a scene renders to the same bytes whatever batch it is in, and only IEEE-exact operations
(+ - * / sqrt, comparisons) touch per-pixel values, which keeps results identical across CPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from piti_core.data.toyworld_scene import FOV_DEG, POLY_KEYS, QUADRIC_KEYS, Scene

F32 = np.float32
INF = F32(np.inf)
_TINY = F32(1e-12)
_BOUND_KEYS = ("bx", "by", "bz", "br")


@dataclass
class Parts:
    """The parts of one kind in a batch: ``p[key]`` has shape (B, 1, P), the rest (B, P)."""

    kind: str
    p: dict[str, np.ndarray]
    rgb: np.ndarray  # (B, P, 3)
    pattern: np.ndarray  # (B, P) int16
    label: np.ndarray  # (B, P) uint8
    instance: np.ndarray  # (B, P) uint8
    valid: np.ndarray  # (B, P) bool

    def gather(self, key: str, idx: np.ndarray) -> np.ndarray:
        """Per-ray value of ``key`` for the part ``idx`` (B, N) each ray hit."""
        return np.take_along_axis(self.p[key][:, 0, :], idx, axis=1)


def pack(scenes: list[Scene], kind: str) -> Parts:
    keys = (QUADRIC_KEYS if kind == "quadric" else POLY_KEYS) + _BOUND_KEYS
    per_scene = [[p for obj in s.objects for p in obj.parts if p.kind == kind] for s in scenes]
    b, n = len(scenes), max([1] + [len(ps) for ps in per_scene])  # >= 1 column: no empty special cases
    params = np.zeros((b, n, len(keys)), F32)
    rgb = np.zeros((b, n, 3), F32)
    pattern = np.zeros((b, n), np.int16)
    label = np.zeros((b, n), np.uint8)
    instance = np.zeros((b, n), np.uint8)
    valid = np.zeros((b, n), bool)
    for i, parts in enumerate(per_scene):
        for j, part in enumerate(parts):
            params[i, j], rgb[i, j], pattern[i, j] = part.params + part.bound, part.rgb, part.pattern
            label[i, j], instance[i, j], valid[i, j] = part.label, part.instance, True
    p = {k: np.ascontiguousarray(params[:, None, :, i]) for i, k in enumerate(keys)}
    return Parts(kind, p, rgb, pattern, label, instance, valid)


def camera_rays(scenes: list[Scene], size: int) -> tuple[np.ndarray, ...]:
    """Primary rays of square ``size`` images, row-major from the top-left pixel.

    Returns ``(origin, d, basis)``: origin (B, 1, 3); directions ``d`` (3 arrays (B, N)) scaled so
    that their component along the viewing axis is 1, hence the ray parameter ``t`` *is* the
    camera z-distance; basis (B, 3, 3) rows = camera right, up, back (+z, toward the viewer) in
    world coordinates.
    """
    tan_half = F32(math.tan(math.radians(FOV_DEG) / 2))
    c = ((np.arange(size, dtype=F32) + F32(0.5)) / F32(size) * F32(2) - F32(1)) * tan_half
    xs = np.broadcast_to(c[None, :], (size, size)).reshape(-1)
    ys = np.broadcast_to(-c[:, None], (size, size)).reshape(-1)
    cos_p = np.array([math.cos(s.cam_pitch) for s in scenes], F32)[:, None]
    sin_p = np.array([math.sin(s.cam_pitch) for s in scenes], F32)[:, None]
    dx = np.ascontiguousarray(np.broadcast_to(xs, (len(scenes), xs.size)))
    dy = ys * cos_p - sin_p
    dz = -ys * sin_p - cos_p
    origin = np.zeros((len(scenes), 1, 3), F32)
    origin[:, 0, 1] = [s.cam_height for s in scenes]
    basis = np.zeros((len(scenes), 3, 3), F32)
    basis[:, 0, 0] = 1
    basis[:, 1, 1], basis[:, 1, 2] = cos_p[:, 0], -sin_p[:, 0]
    basis[:, 2, 1], basis[:, 2, 2] = sin_p[:, 0], cos_p[:, 0]
    return origin, (dx, dy, dz), basis


def nonzero(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < _TINY, _TINY, x)


def quadric_interval(o, d, p, eps: float):
    """Entry distance of rays into quadric parts (inf: missed) and whether the ray entered through a
    flat cap rather than the curved surface. All arguments broadcast elementwise."""
    ox, oy, oz = o
    dx, dy, dz = d
    xo, yo, zo = ox - p["cx"], oy - p["yc"], oz - p["cz"]
    alpha = p["alpha"]
    a = dx * dx + dz * dz + alpha * (dy * dy)
    b = F32(2) * (xo * dx + zo * dz + alpha * (yo * dy))
    c = xo * xo + zo * zo + alpha * (yo * yo) - p["rho"]
    disc = b * b - F32(4) * a * c
    real = disc >= 0
    h = F32(-0.5) * (b + np.copysign(np.sqrt(np.maximum(disc, F32(0))), b))
    r1, r2 = h / nonzero(a), c / nonzero(h)
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    inv_dy = F32(1) / nonzero(dy)
    t0, t1 = (p["y0"] - oy) * inv_dy, (p["y1"] - oy) * inv_dy
    s_in, s_out = np.minimum(t0, t1), np.maximum(t0, t1)
    # a > 0: inside on [lo, hi]. a < 0 (cones, steep rays): inside on (-inf, lo] and [hi, inf), one
    # piece per nappe; the part's slab keeps the nappe we want, so take whichever piece survives.
    use_low = s_in <= np.minimum(s_out, lo)
    neg_in = np.where(real & ~use_low, np.maximum(s_in, hi), s_in)
    neg_out = np.where(real & use_low, np.minimum(s_out, lo), s_out)
    convex = a > 0
    t_in = np.where(convex, np.maximum(lo, s_in), neg_in)
    t_out = np.where(convex, np.minimum(hi, s_out), neg_out)
    hit = (t_in <= t_out) & (t_in > eps) & (real | ~convex)
    return np.where(hit, t_in, INF), t_in == s_in


def poly_interval(o, d, p, eps: float):
    """Entry distance of rays into convex polyhedra (inf: missed) and the face entered: 2k (slab k,
    low side), 2k+1 (slab k, high side), 6 + j (half-space j). All arguments broadcast."""
    ox, oy, oz = o
    dx, dy, dz = d
    t_in, t_out, face = None, None, None
    for k in range(3):
        nx, ny, nz = p[f"s{k}x"], p[f"s{k}y"], p[f"s{k}z"]
        den = nonzero(dx * nx + dy * ny + dz * nz)
        no = ox * nx + oy * ny + oz * nz
        inv = F32(1) / den
        ta, tb = (p[f"s{k}lo"] - no) * inv, (p[f"s{k}hi"] - no) * inv
        k_in, k_out = np.minimum(ta, tb), np.maximum(ta, tb)
        k_face = np.where(den < 0, np.int8(2 * k + 1), np.int8(2 * k))
        if t_in is None:
            t_in, t_out, face = k_in, k_out, k_face
        else:
            face = np.where(k_in > t_in, k_face, face)
            t_in, t_out = np.maximum(t_in, k_in), np.minimum(t_out, k_out)
    for j in range(2):
        mx, my, mz = p[f"h{j}x"], p[f"h{j}y"], p[f"h{j}z"]
        den = nonzero(dx * mx + dy * my + dz * mz)
        t = (p[f"h{j}d"] - (ox * mx + oy * my + oz * mz)) / den
        entering = den < 0  # moving against the outward normal: the plane is an entry
        face = np.where(entering & (t > t_in), np.int8(6 + j), face)
        t_in = np.where(entering, np.maximum(t_in, t), t_in)
        t_out = np.where(entering, t_out, np.minimum(t_out, t))
    hit = (t_in <= t_out) & (t_in > eps)
    return np.where(hit, t_in, INF), face


def screen_candidates(parts: Parts, origin: np.ndarray, basis: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """(scene, pixel, part) index triples of the primary rays worth intersecting exactly: the pixels
    of the screen rectangle that holds each part's projected bounding sphere (plus one pixel)."""
    rel = np.stack([parts.p[k][:, 0, :] for k in ("bx", "by", "bz")], -1).astype(np.float64) - origin
    cam = np.einsum("bpj,bij->bpi", rel, basis.astype(np.float64))  # right, up, back components
    x, y, z, r = cam[..., 0], cam[..., 1], -cam[..., 2], parts.p["br"][:, 0, :] * 1.01 + 1e-3
    tan_half = math.tan(math.radians(FOV_DEG) / 2)
    ahead = z - r > 1e-3  # wholly in front of the camera: exact tangent-plane extents
    with np.errstate(invalid="ignore", divide="ignore"):
        den = z * z - r * r
        kx = (x * z + np.array([[[-1.0]], [[1.0]]]) * r * np.sqrt(x * x + den)) / den
        ky = (y * z + np.array([[[-1.0]], [[1.0]]]) * r * np.sqrt(y * y + den)) / den
    col = (kx / tan_half + 1) / 2 * size - 0.5
    row = (1 - ky[::-1] / tan_half) / 2 * size - 0.5  # image rows grow downward
    c0 = np.where(ahead, np.ceil(col[0] - 1), 0).clip(0, size)
    c1 = np.where(ahead, np.floor(col[1] + 1), size - 1).clip(-1, size - 1)
    r0 = np.where(ahead, np.ceil(row[0] - 1), 0).clip(0, size)
    r1 = np.where(ahead, np.floor(row[1] + 1), size - 1).clip(-1, size - 1)
    keep = parts.valid & (z + r > 0)  # a part wholly behind the camera is never seen
    w = np.where(keep, np.maximum(c1 - c0 + 1, 0), 0).astype(np.int64).ravel()
    h = np.where(keep, np.maximum(r1 - r0 + 1, 0), 0).astype(np.int64).ravel()
    count = w * h
    rect = np.repeat(np.arange(count.size), count)
    local = np.arange(rect.size) - np.repeat(np.cumsum(count) - count, count)
    rows = r0.ravel().astype(np.int64)[rect] + local // w[rect]
    cols = c0.ravel().astype(np.int64)[rect] + local % w[rect]
    bi, pi = np.divmod(rect, parts.valid.shape[1])
    return bi, rows * size + cols, pi


def shadow_candidates(p, light, parts: Parts, active) -> tuple[np.ndarray, ...]:
    """(scene, pixel, part) index triples of shadow rays (from points ``p``, (B, N) each, toward the
    unit ``light`` direction, (B, 1) each) that pass within a part's bounding sphere: a test in the
    plane perpendicular to the light, where every shadow ray is a point."""
    lx, ly, lz = light
    inv = F32(1) / np.sqrt(lx * lx + lz * lz)  # light never points straight up
    e1 = (-lz * inv, np.zeros_like(lx), lx * inv)  # light x up, normalised
    e2 = (ly * e1[2] - lz * e1[1], lz * e1[0] - lx * e1[2], lx * e1[1] - ly * e1[0])  # light x e1
    c = [parts.p[k] for k in ("bx", "by", "bz")]
    dot = lambda u, v: u[0] * v[0] + u[1] * v[1] + u[2] * v[2]  # noqa: E731
    a, b, s = (dot(p, e)[..., None] for e in (e1, e2, light))
    ca, cb, cs = (dot(c, tuple(v[..., None] for v in e)) for e in (e1, e2, light))
    r = parts.p["br"] * F32(1.01) + F32(1e-3)
    da, db = a - ca, b - cb
    near = (da * da + db * db <= r * r) & (s <= cs + r)
    near &= parts.valid[:, None, :] & active[..., None]
    return np.nonzero(near)


def _intersect(o, d, parts: Parts, candidates, eps: float):
    """Exact intersections of the candidate (scene, ray, part) triples: t (inf: missed), cap/face."""
    bi, ni, pi = candidates
    take = lambda v: v[bi, ni] if v.shape[1] > 1 else v[bi, 0]  # noqa: E731
    o, d = tuple(take(v) for v in o), tuple(take(v) for v in d)
    keys = QUADRIC_KEYS if parts.kind == "quadric" else POLY_KEYS[:23]  # not the texture origin
    prm = {k: parts.p[k][bi, 0, pi] for k in keys}
    interval = quadric_interval if parts.kind == "quadric" else poly_interval
    return interval(o, d, prm, eps)


def first_hit(o, d, parts: Parts, candidates, eps: float = 1e-4):
    """Nearest part along each ray: t (B, N) (inf: none), part index (B, N), cap flag / face."""
    bi, ni, pi = candidates
    t, extra = _intersect(o, d, parts, candidates, eps)
    shape = d[0].shape + parts.valid.shape[1:]
    t_all = np.full(shape, INF)
    t_all[bi, ni, pi] = t
    extra_all = np.zeros(shape, extra.dtype)
    extra_all[bi, ni, pi] = extra
    idx = np.argmin(t_all, axis=-1)[..., None]
    pick = lambda a: np.take_along_axis(a, idx, axis=-1)[..., 0]  # noqa: E731
    return pick(t_all), idx[..., 0], pick(extra_all)


def occluded(p, light, quads: Parts, polys: Parts, active) -> np.ndarray:
    """Whether shadow rays from points ``p`` ((B, N) each) toward ``light`` ((B, 1) each) hit a part."""
    blocked = np.zeros(active.shape, bool)
    for parts in (quads, polys):
        cand = shadow_candidates(p, light, parts, active)
        t, _ = _intersect(p, light, parts, cand, 0.0)
        hit = np.isfinite(t)
        blocked[cand[0][hit], cand[1][hit]] = True
    return blocked
