"""Shading, textures and sky of the toy world; :func:`render_batch` turns scenes into arrays.

Every pixel is one ray through its centre (no anti-aliasing), so the image, labels, depth and
normals of a pixel describe the same surface point. Textures are procedural functions of world
or object coordinates (hashed value noise, stripes, checkers), hence the same at every resolution.
"""

from __future__ import annotations

import numpy as np

from piti_core.data import toyworld_geom as geom
from piti_core.data.toyworld_scene import (
    BARK, CHECKER, CLASSES, HSTRIPES, LEAVES, ROOF, VSTRIPES, WALL, WOOD, Scene,
)

F32 = geom.F32
#: Depth is clipped here (the largest value a 16-bit PNG of millimetres holds).
MAX_DEPTH_M = 65.535
_GROUND_RGB = {"grass": (0.24, 0.47, 0.14), "sand": (0.84, 0.72, 0.50), "water": (0.07, 0.20, 0.34),
               "rock": (0.46, 0.44, 0.41), "snow": (0.92, 0.94, 0.98)}
_SKY_STYLE = {  # glow strength, sun/moon disc colour, cloud colour
    "day": (0.25, (1.6, 1.55, 1.4), (0.95, 0.96, 0.98)),
    "sunset": (0.7, (1.6, 1.2, 0.7), (0.95, 0.62, 0.50)),
    "overcast": (0.05, (0.80, 0.81, 0.83), (0.70, 0.71, 0.74)),
    "night": (0.05, (0.90, 0.90, 0.82), (0.10, 0.11, 0.15)),
}
_WINDOW_RGB = (0.10, 0.14, 0.22)


# ---------------------------------------------------------------------------------------- noise


def _hash(ix: np.ndarray, iz: np.ndarray, seed) -> np.ndarray:
    """Integer lattice hash -> float32 in [0, 1) (uint32 arithmetic, wraps by design)."""
    u32 = np.uint32
    h = ix.astype(np.int32).view(u32) * u32(0x9E3779B1) + iz.astype(np.int32).view(u32) * u32(0x85EBCA77) + seed
    h = (h ^ (h >> u32(15))) * u32(0x2C1B3C6D)
    h = (h ^ (h >> u32(12))) * u32(0x297A2D39)
    h ^= h >> u32(15)
    return (h >> u32(8)).astype(F32) * F32(1 / 2**24)


def value_noise(x: np.ndarray, z: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1]; ``seed`` (uint32) broadcasts, e.g. one per scene."""
    xi, zi = np.floor(x), np.floor(z)
    fx, fz = x - xi, z - zi
    ux, uz = fx * fx * (F32(3) - F32(2) * fx), fz * fz * (F32(3) - F32(2) * fz)
    h00, h10 = _hash(xi, zi, seed), _hash(xi + 1, zi, seed)
    h01, h11 = _hash(xi, zi + 1, seed), _hash(xi + 1, zi + 1, seed)
    top, bottom = h00 + (h10 - h00) * ux, h01 + (h11 - h01) * ux
    return top + (bottom - top) * uz


def fbm(x, z, seed) -> np.ndarray:
    """Two octaves of value noise, in [0, 1]."""
    return F32(0.65) * value_noise(x, z, seed) + F32(0.35) * value_noise(x * F32(2.03), z * F32(2.03), seed + 7)


def _tri(x):
    return np.abs(F32(2) * (x - np.floor(x)) - F32(1))


def _band(x):
    f = np.floor(x)
    return f - F32(2) * np.floor(f * F32(0.5))  # 0 or 1


# ------------------------------------------------------------------------------------ per scene


class _SceneVars:
    """Per-scene constants as (B, 1) / (B, 1, 3) arrays; :meth:`take` gives them per element."""

    def __init__(self, scenes: list[Scene]):
        col = lambda vals, dtype=F32: np.array(vals, dtype)[:, None]  # noqa: E731
        self.sun = col([s.sun_dir for s in scenes])
        self.sun_rgb = col([s.sun_rgb for s in scenes])
        self.ambient = col([s.ambient_rgb for s in scenes])
        self.zenith = col([s.zenith_rgb for s in scenes])
        self.horizon = col([s.horizon_rgb for s in scenes])
        self.glow = col([_SKY_STYLE[s.sky][0] for s in scenes])
        self.disc = col([_SKY_STYLE[s.sky][1] for s in scenes])
        self.cloud_rgb = col([_SKY_STYLE[s.sky][2] for s in scenes])
        self.clouds = col([s.clouds for s in scenes])
        self.stars = col([s.sky == "night" for s in scenes], bool)
        self.fog = col([s.fog_dist for s in scenes])
        self.seed = col([s.noise_seed for s in scenes], np.uint32)
        self.ground = col([CLASSES.index(s.ground) for s in scenes], np.uint8)
        self.patches = col([CLASSES.index(s.patches or s.ground) for s in scenes], np.uint8)
        self.patch_thr = col([0.49 + 0.5 * (0.5 - s.patch_cover) for s in scenes])  # ~ fbm's (1-cover) quantile

    def take(self, scene_idx: np.ndarray) -> "_Taken":
        """The constants of scene ``scene_idx[k]`` for element k: shapes (K,) / (K, 3)."""
        return _Taken(self, scene_idx)


class _Taken:
    """:class:`_SceneVars` gathered per element, lazily (only the constants a function reads)."""

    def __init__(self, sv: _SceneVars, scene_idx: np.ndarray):
        self._sv, self._idx = sv, scene_idx

    def __getattr__(self, name: str) -> np.ndarray:
        value = getattr(self._sv, name)[self._idx, 0]
        setattr(self, name, value)
        return value


def ground_material(px, pz, sv: _SceneVars) -> np.ndarray:
    """Ground label of points (px, 0, pz): the scene's ground, or its patch material in blobs."""
    n = fbm(px * F32(0.09), pz * F32(0.09), sv.seed + 101)
    return np.where(n > sv.patch_thr, sv.patches, sv.ground)


def sky_rgb(dx, dy, dz, sv: _SceneVars) -> np.ndarray:
    """Sky colour seen along unit directions: gradient, sun glow and disc, clouds, stars."""
    e = np.clip(dy, F32(0), F32(1))
    rgb = sv.horizon + (sv.zenith - sv.horizon) * np.sqrt(e)[..., None]
    cos_sun = np.maximum(dx * sv.sun[..., 0] + dy * sv.sun[..., 1] + dz * sv.sun[..., 2], F32(0))
    glow = cos_sun * cos_sun
    glow = glow * glow
    rgb = rgb + sv.sun_rgb * (sv.glow * glow * glow)[..., None]
    rgb = np.where((cos_sun > F32(0.9996))[..., None], sv.disc, rgb)
    inv = F32(1) / np.maximum(e, F32(0.02))  # clouds: noise on a plane high above
    n = fbm(dx * inv * F32(0.9), dz * inv * F32(0.9), sv.seed + 202)
    cover = np.clip((n - (F32(1) - sv.clouds)) * F32(3), F32(0), F32(0.92)) * np.clip(e * F32(10), F32(0), F32(1))
    cover = np.where(e > F32(0.02), cover, F32(0))
    rgb = rgb + (sv.cloud_rgb - rgb) * cover[..., None]
    star_inv = F32(80) / (e + F32(0.3))
    star = (_hash(np.floor(dx * star_inv), np.floor(dz * star_inv), sv.seed + 303) < F32(0.012)) & (e > F32(0.05))
    star &= sv.stars & (cover < F32(0.2))
    return np.where(star[..., None], F32(0.85), rgb)


# ------------------------------------------------------------------------------------- textures


def _ground_albedo(mat, px, pz, t, sv):
    """Albedo (K, 3) of ground points and the fine noise used for water ripples."""
    fine = fbm(px * F32(2.1), pz * F32(2.1), sv.seed + 11)
    mid = value_noise(px * F32(0.7), pz * F32(0.7), sv.seed + 13)
    ripple = _tri(px * F32(0.35) + pz * F32(1.6) + F32(2.5) * mid)
    crack = np.abs(mid - F32(0.5)) < F32(0.025)
    m = np.select(
        [mat == CLASSES.index(c) for c in ("grass", "sand", "water", "rock", "snow")],
        [F32(0.72) + F32(0.55) * fine, F32(0.86) + F32(0.14) * ripple + F32(0.08) * fine,
         F32(0.85) + F32(0.3) * fine, np.where(crack, F32(0.45), F32(0.6) + F32(0.6) * fine),
         F32(0.93) + F32(0.1) * fine], F32(1))
    fade = F32(1) / (F32(1) + t * F32(0.04))  # texture contrast fades with distance (less aliasing)
    m = F32(1) + (m - F32(1)) * fade
    table = np.zeros((len(CLASSES), 3), F32)
    for name, rgb in _GROUND_RGB.items():
        table[CLASSES.index(name)] = rgb
    return table[mat] * m[..., None], fine


def _pseudo_angle(x, z):
    """Monotone stand-in for the azimuth atan2(z, x), in [0, 4) (exact arithmetic only)."""
    r = x / (np.abs(x) + np.abs(z) + F32(1e-12))
    return np.where(z >= 0, F32(1) - r, F32(3) + r)


def _object_modulation(pattern, lx, ly, lz, along, is_quadric, seed):
    """Brightness factor of object surfaces. ``along`` is the horizontal coordinate along a face."""
    ang = _pseudo_angle(lx, lz)
    around = np.where(is_quadric, ang * F32(3), along * F32(5))
    n = value_noise(F32(6) * (lx + lz) + F32(3) * ly, F32(6) * ly - F32(2) * lx, seed + 17)
    checks = np.floor(lx * F32(4)) + np.floor(ly * F32(4)) + np.floor(lz * F32(4))
    grain = np.where(is_quadric, ly * F32(5), along * F32(7)) + F32(2) * n
    return np.select(
        [pattern == c for c in (HSTRIPES, VSTRIPES, CHECKER, WOOD, LEAVES, BARK, WALL, ROOF)],
        [F32(1) - F32(0.38) * _band(ly * F32(5)), F32(1) - F32(0.38) * _band(around),
         F32(1) - F32(0.38) * _band(checks), F32(0.74) + F32(0.26) * _tri(grain), F32(0.55) + F32(0.6) * n,
         F32(0.7) + F32(0.3) * _tri(ang * F32(7)), F32(0.93) + F32(0.08) * n,
         F32(1) - F32(0.22) * _band(ly * F32(8))], F32(1))


def _objects(tr: dict, at: tuple[np.ndarray, np.ndarray], sv: _SceneVars):
    """Unit normals (3 arrays) and albedo (K, 3) of the object pixels ``at`` (scene, ray indices)."""
    bi, ni = at
    quads, polys = tr["quads"], tr["polys"]
    iq, ip, face, cap = tr["i_quad"][at], tr["i_poly"][at], tr["face"][at], tr["cap"][at]
    is_quad = tr["kind"][at] == QUADRIC
    gq = lambda key: quads.p[key][bi, 0, iq]  # noqa: E731
    gp = lambda key: polys.p[key][bi, 0, ip]  # noqa: E731
    px, py, pz = (v[at] for v in tr["p"])
    dx, dy, dz = (v[at] for v in tr["d"])
    # Quadric: gradient of the implicit function, or a flat cap. Polyhedron: the face entered
    # (slab faces: -n on the low side, +n on the high side).
    cx, cz = gq("cx"), gq("cz")
    cap_y = np.where(dy < 0, F32(1), F32(-1))
    quad_n = (np.where(cap, F32(0), px - cx), np.where(cap, cap_y, gq("alpha") * (py - gq("yc"))),
              np.where(cap, F32(0), pz - cz))
    conds = [face == f for f in range(8)]
    n = []
    for c, qv in zip("xyz", quad_n):
        slab = [s * gp(f"s{k}{c}") for k in range(3) for s in (F32(-1), F32(1))]
        n.append(np.where(is_quad, qv, np.select(conds, slab + [gp(f"h0{c}"), gp(f"h1{c}")])))
    inv_len = F32(1) / np.maximum(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), F32(1e-12))
    inv_len = np.where(n[0] * dx + n[1] * dy + n[2] * dz > 0, -inv_len, inv_len)  # rounding at silhouettes
    n = [v * inv_len for v in n]

    lx = px - np.where(is_quad, cx, gp("tx"))
    ly = py - np.where(is_quad, gq("y0"), gp("ty"))
    lz = pz - np.where(is_quad, cz, gp("tz"))
    along = np.where(face <= 1, lx * gp("s2x") + lz * gp("s2z"), lx * gp("s0x") + lz * gp("s0z"))
    pattern = np.where(is_quad, quads.pattern[bi, iq], polys.pattern[bi, ip])
    m = _object_modulation(pattern, lx, ly, lz, along, is_quad, sv.seed)
    rgb = np.where(is_quad[:, None], quads.rgb[bi, iq], polys.rgb[bi, ip]) * m[:, None]
    rel = ly / np.maximum(gp("s1hi") - gp("s1lo"), F32(1e-3))  # house windows
    pane = _tri(along * F32(1.2) + F32(0.5))
    window = (pattern == WALL) & ((face <= 1) | (face >= 4)) & (rel > 0.38) & (rel < 0.72) & (pane < 0.4)
    return n, np.where(window[:, None], np.array(_WINDOW_RGB, F32), rgb)


# ---------------------------------------------------------------------------------------- render

SKY, GROUND, QUADRIC, POLY = 0, 1, 2, 3
_FAR = F32(1e4)  # hit points further than this (the ground near the horizon) are textured as if here


def trace(scenes: list[Scene], size: int, sv: _SceneVars | None = None) -> dict:
    """Primary visibility: what each pixel's ray hits first, its label and instance (B, N)."""
    sv = sv or _SceneVars(scenes)
    origin, d, basis = geom.camera_rays(scenes, size)
    o = (origin[..., 0], origin[..., 1], origin[..., 2])
    quads, polys = geom.pack(scenes, "quadric"), geom.pack(scenes, "poly")
    t_ground = np.where(d[1] < 0, -o[1] / geom.nonzero(d[1]), geom.INF)
    t_quad, i_quad, cap = geom.first_hit(o, d, quads, geom.screen_candidates(quads, origin, basis, size))
    t_poly, i_poly, face = geom.first_hit(o, d, polys, geom.screen_candidates(polys, origin, basis, size))
    is_quad = np.isfinite(t_quad) & (t_quad <= np.minimum(t_poly, t_ground))
    is_poly = ~is_quad & np.isfinite(t_poly) & (t_poly <= t_ground)
    kind = np.select([is_quad, is_poly, np.isfinite(t_ground)], [QUADRIC, POLY, GROUND], SKY).astype(np.uint8)
    t = np.where(kind == SKY, F32(0), np.minimum(np.select([is_quad, is_poly], [t_quad, t_poly], t_ground), _FAR))
    p = tuple(o[i] + t * d[i] for i in range(3))
    label = np.zeros(t.shape, np.uint8)
    at = np.nonzero(kind == GROUND)
    label[at] = ground_material(p[0][at], p[2][at], sv.take(at[0]))
    instance = np.zeros(t.shape, np.uint8)
    for parts, k, idx in ((quads, QUADRIC, i_quad), (polys, POLY, i_poly)):
        at = np.nonzero(kind == k)
        label[at], instance[at] = parts.label[at[0], idx[at]], parts.instance[at[0], idx[at]]
    return dict(kind=kind, t=t, o=o, d=d, p=p, basis=basis, label=label, instance=instance, quads=quads,
                polys=polys, i_quad=i_quad, cap=cap, i_poly=i_poly, face=face)


def render_batch(scenes: list[Scene], size: int) -> dict[str, np.ndarray]:
    """Render ``scenes`` at ``size`` x ``size``: images, labels, depth, normals, instances, seg."""
    sv = _SceneVars(scenes)
    tr = trace(scenes, size, sv)
    kind, t, p, d, label = tr["kind"], tr["t"], tr["p"], tr["d"], tr["label"]
    sky = kind == SKY
    shape = t.shape
    n = [np.zeros(shape, F32) for _ in range(3)]
    albedo = np.zeros(shape + (3,), F32)
    fine = np.zeros(shape, F32)
    at = np.nonzero(kind == GROUND)
    n[1][at] = 1
    albedo[at], fine[at] = _ground_albedo(label[at], p[0][at], p[2][at], t[at], sv.take(at[0]))
    at = np.nonzero(kind >= QUADRIC)
    obj_n, albedo[at] = _objects(tr, at, sv.take(at[0]))
    for i in range(3):
        n[i][at] = obj_n[i]

    # Direct light with cast shadows: a shadow ray from just above each lit surface point to the light.
    sun = [sv.sun[..., i] for i in range(3)]
    ndl = np.maximum(n[0] * sun[0] + n[1] * sun[1] + n[2] * sun[2], F32(0))
    start = tuple(p[i] + n[i] * F32(2e-3) for i in range(3))
    lit = ~geom.occluded(start, sun, tr["quads"], tr["polys"], (ndl > 0) & ~sky)
    light = sv.ambient * (F32(0.8) + F32(0.2) * n[1])[..., None] + sv.sun_rgb * (ndl * lit)[..., None]
    rgb = albedo * light
    fog = (t / (t + sv.fog))[..., None]
    rgb = rgb + (sv.horizon - rgb) * fog

    # Sky colour along the view ray (sky pixels) or the mirrored ray (water, with a little ripple).
    water = label == CLASSES.index("water")
    at = np.nonzero(sky | water)
    dx, dy, dz = (v[at] for v in d)
    inv = F32(1) / np.sqrt(dx * dx + dy * dy + dz * dz)
    ux, uy, uz, w = dx * inv, dy * inv, dz * inv, water[at]
    colour = sky_rgb(ux + np.where(w, F32(0.08) * (fine[at] - F32(0.5)), F32(0)), np.where(w, -uy, uy), uz,
                     sv.take(at[0]))
    r = F32(1) + uy  # 1 - |reflected y| for downward rays
    fresnel = np.where(w, F32(0.2) + F32(0.6) * (r * r) * (r * r), F32(1))[:, None]
    rgb[at] = rgb[at] * (F32(1) - fresnel) + colour * fresnel
    image = (np.clip(rgb, F32(0), F32(1)) * F32(255) + F32(0.5)).astype(np.uint8)

    basis = tr["basis"]  # camera-space normals: components along right, up, back
    normals = np.stack([n[0] * basis[:, i, None, 0] + n[1] * basis[:, i, None, 1] + n[2] * basis[:, i, None, 2]
                        for i in range(3)], axis=-1)
    depth = np.where(sky, F32(0), np.minimum(t, F32(MAX_DEPTH_M)))
    seg = np.where(tr["instance"] > 0, tr["instance"].astype(np.int16) + 100, label.astype(np.int16))
    size2 = (len(scenes), size, size)
    return dict(images=image.reshape(size2 + (3,)), labels=label.reshape(size2), depth=depth.reshape(size2),
                normals=normals.reshape(size2 + (3,)), instances=tr["instance"].reshape(size2),
                seg=seg.reshape(size2))
