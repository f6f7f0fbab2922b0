"""The toy world's vocabulary and scene sampler.

A scene is a camera above the ground plane ``y = 0`` (world: +y up, the camera looks toward -z),
a sky with a light, a ground material (with optional patches of a second one) and 1-6 objects
standing on the ground. Each object is made of one or two convex *parts* that the renderer
(:mod:`piti_core.data.toyworld_render`) intersects analytically:

* ``quadric`` parts: ``(x-cx)^2 + (z-cz)^2 + alpha (y-yc)^2 <= rho`` cut to ``y0 <= y <= y1``.
  ``alpha = 1`` is a sphere, ``0`` a vertical cylinder, ``-s^2`` a cone with its apex at ``yc``.
* ``poly`` parts: three slabs ``lo_k <= n_k . x <= hi_k`` and two half-spaces ``m_j . x <= d_j``:
  a yawed box (the half-spaces repeat its top face) or a house roof (a triangular prism).

:func:`sample_scene` draws everything from ``numpy.random.default_rng(SeedSequence([seed, index]))``,
so sample ``index`` of a world never depends on how many samples are drawn, in which order or
at which resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Label ids are positions in this tuple: 0 sky, 1-5 ground materials, 6-11 object classes.
CLASSES: tuple[str, ...] = (
    "sky", "grass", "sand", "water", "rock", "snow",
    "sphere", "box", "cylinder", "cone", "tree", "house",
)
#: One RGB colour per class, for colour-coded label maps.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (135, 206, 235), (64, 160, 43), (237, 201, 120), (31, 90, 200), (128, 118, 108), (240, 240, 250),
    (230, 25, 75), (245, 130, 48), (145, 30, 180), (70, 240, 240), (0, 100, 0), (170, 110, 40),
)
#: Label value that data loaders treat as "no label". The toy world itself labels every pixel.
IGNORE_INDEX = 255
GROUND_MATERIALS: tuple[str, ...] = CLASSES[1:6]
OBJECT_CLASSES: tuple[str, ...] = CLASSES[6:]
SKIES: tuple[str, ...] = ("day", "sunset", "overcast", "night")
#: Vertical (= horizontal, images are square) field of view of the pinhole camera, degrees.
FOV_DEG = 50.0

#: Named object colours (linear-ish RGB in [0, 1]); the names are the adjectives of the captions.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10), "orange": (0.95, 0.50, 0.10), "yellow": (0.95, 0.85, 0.15),
    "green": (0.20, 0.62, 0.18), "blue": (0.15, 0.30, 0.85), "purple": (0.50, 0.20, 0.70),
    "pink": (0.95, 0.55, 0.70), "white": (0.92, 0.92, 0.90), "black": (0.09, 0.09, 0.10),
    "gray": (0.50, 0.50, 0.52), "brown": (0.45, 0.28, 0.12), "wooden": (0.66, 0.45, 0.24),
}
_COLOUR_CHOICES = {  # colours each class may take
    "sphere": [c for c in COLOURS if c != "wooden"],
    "box": list(COLOURS), "cylinder": list(COLOURS), "cone": list(COLOURS),
    "tree": ["green", "green", "green", "yellow", "orange", "red"],
    "house": ["white", "yellow", "red", "blue", "gray", "pink", "brown", "wooden"],
}
_GROUND_PAIRS = {  # primary material -> materials its patches may be made of
    "grass": ("water", "rock", "sand"), "sand": ("water", "rock"),
    "rock": ("snow", "water", "grass"), "snow": ("rock", "water"),
}

# Surface patterns (texture codes understood by the renderer).
PLAIN, HSTRIPES, VSTRIPES, CHECKER, WOOD, LEAVES, BARK, WALL, ROOF = range(9)
_TRUNK_RGB = (0.36, 0.23, 0.12)
REPEAT_P = 0.35  # chance that an object repeats the class and colour of one already placed
_ROOF_RGB = [(0.55, 0.16, 0.10), (0.30, 0.22, 0.18), (0.35, 0.36, 0.40)]


@dataclass(frozen=True)
class Part:
    """One convex solid of an object; ``params`` follows the layout of :data:`QUADRIC_KEYS` /
    :data:`POLY_KEYS`; ``bound`` is a bounding sphere (x, y, z, radius) used to skip rays early."""

    kind: str  # "quadric" | "poly"
    params: tuple[float, ...]
    bound: tuple[float, float, float, float]
    rgb: tuple[float, float, float]
    pattern: int
    label: int
    instance: int


QUADRIC_KEYS = ("cx", "cz", "yc", "alpha", "rho", "y0", "y1")
# Three slabs (normal xyz, lo, hi), two half-spaces (normal xyz, d), then the texture origin t.
POLY_KEYS = tuple(f"s{k}{c}" for k in range(3) for c in ("x", "y", "z", "lo", "hi")) + tuple(
    f"h{j}{c}" for j in range(2) for c in ("x", "y", "z", "d")
) + ("tx", "ty", "tz")


@dataclass(frozen=True)
class SceneObject:
    cls: str
    colour: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Scene:
    index: int
    cam_height: float
    cam_pitch: float  # radians, looking down
    sky: str
    sun_dir: tuple[float, float, float]  # unit vector toward the light
    sun_rgb: tuple[float, float, float]
    ambient_rgb: tuple[float, float, float]
    zenith_rgb: tuple[float, float, float]
    horizon_rgb: tuple[float, float, float]
    clouds: float  # 0 clear .. 1 covered
    fog_dist: float  # metres at which fog reaches 50 %
    ground: str
    patches: str | None
    patch_cover: float  # fraction of the ground (roughly) covered by patches
    noise_seed: int
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)


def _jitter(rng, rgb, amount):
    scale = 1 + amount * rng.uniform(-1, 1, size=3)
    return tuple(min(max(float(c * k), 0.0), 1.0) for c, k in zip(rgb, scale))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _sky(rng) -> dict:
    kind = SKIES[int(np.searchsorted([0.4, 0.65, 0.85], rng.uniform(), side="right"))]
    elev_range, zen, hor, sun, amb, clouds, fog = {
        "day": ((30, 70), (0.18, 0.42, 0.88), (0.72, 0.85, 0.98), (1.05, 1.0, 0.92), (0.30, 0.34, 0.42),
                (0.0, 0.45), (90, 200)),
        "sunset": ((4, 14), (0.22, 0.22, 0.52), (1.0, 0.55, 0.28), (1.1, 0.62, 0.32), (0.42, 0.32, 0.38),
                   (0.0, 0.35), (70, 150)),
        "overcast": ((35, 70), (0.55, 0.57, 0.61), (0.76, 0.77, 0.79), (0.28, 0.28, 0.28), (0.62, 0.63, 0.66),
                     (0.85, 1.0), (35, 80)),
        "night": ((20, 60), (0.01, 0.02, 0.06), (0.06, 0.08, 0.17), (0.36, 0.42, 0.58), (0.09, 0.10, 0.16),
                  (0.0, 0.3), (60, 140)),
    }[kind]
    elev = math.radians(rng.uniform(*elev_range))
    azim = rng.uniform(0, 2 * math.pi)
    sun_dir = (math.cos(elev) * math.sin(azim), math.sin(elev), -math.cos(elev) * math.cos(azim))
    return dict(
        sky=kind, sun_dir=sun_dir, sun_rgb=_jitter(rng, sun, 0.06), ambient_rgb=_jitter(rng, amb, 0.08),
        zenith_rgb=_jitter(rng, zen, 0.08), horizon_rgb=_jitter(rng, hor, 0.05),
        clouds=float(rng.uniform(*clouds)), fog_dist=float(rng.uniform(*fog)),
    )


def _quadric(cx, cz, yc, alpha, rho, y0, y1, rgb, pattern, label, inst) -> Part:
    if alpha > 0:  # sphere
        bound = (cx, yc, cz, math.sqrt(rho))
    else:  # cylinder or cone: widest at one end
        r2 = max(rho - alpha * (y0 - yc) ** 2, rho - alpha * (y1 - yc) ** 2)
        bound = (cx, (y0 + y1) / 2, cz, math.sqrt(r2 + ((y1 - y0) / 2) ** 2))
    return Part("quadric", (cx, cz, yc, alpha, rho, y0, y1), bound, rgb, pattern, label, inst)


def _poly(slabs, halfspaces, origin, radius, rgb, pattern, label, inst) -> Part:
    """A convex polyhedron centred above ``origin`` (its base centre), within ``radius`` of its centre."""
    params = [v for n, lo, hi in slabs for v in (*n, lo, hi)]
    params += [v for m, d in halfspaces for v in (*m, d)]
    height = slabs[1][2] - slabs[1][1]
    bound = (origin[0], origin[1] + height / 2, origin[2], radius)
    return Part("poly", tuple(float(v) for v in params + list(origin)), bound, rgb, pattern, label, inst)


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _box(cx, cz, yaw, w, d, y0, y1, rgb, pattern, label, inst) -> Part:
    u, v, up = (math.cos(yaw), 0.0, -math.sin(yaw)), (math.sin(yaw), 0.0, math.cos(yaw)), (0.0, 1.0, 0.0)
    c = (cx, 0.0, cz)
    slabs = [(u, _dot(u, c) - w / 2, _dot(u, c) + w / 2), (up, y0, y1), (v, _dot(v, c) - d / 2, _dot(v, c) + d / 2)]
    radius = 0.5 * math.sqrt(w * w + d * d + (y1 - y0) ** 2)
    return _poly(slabs, [(up, y1), (up, y1)], (cx, y0, cz), radius, rgb, pattern, label, inst)


def _roof(cx, cz, yaw, length, span, y0, rise, rgb, label, inst) -> Part:
    """A triangular prism: ridge along the yawed u axis at height ``y0 + rise``, eaves ``span`` apart."""
    u, v, up = (math.cos(yaw), 0.0, -math.sin(yaw)), (math.sin(yaw), 0.0, math.cos(yaw)), (0.0, 1.0, 0.0)
    c = (cx, 0.0, cz)
    half = span / 2
    halfspaces = []
    for sign in (1.0, -1.0):  # the two sloped faces, through the ridge line
        nrm = math.hypot(rise, half)
        m = tuple((sign * rise * v[i] + half * up[i]) / nrm for i in range(3))
        ridge = (cx, y0 + rise, cz)
        halfspaces.append((m, _dot(m, ridge)))
    slabs = [(u, _dot(u, c) - length / 2, _dot(u, c) + length / 2), (up, y0, y0 + rise),
             (v, _dot(v, c) - half, _dot(v, c) + half)]
    radius = 0.5 * math.sqrt(length * length + span * span + rise * rise)
    return _poly(slabs, halfspaces, (cx, y0, cz), radius, rgb, ROOF, label, inst)


def _object(rng, cls: str, colour: str, x: float, z: float, inst: int) -> tuple[SceneObject, float]:
    """One object standing at (x, 0, z); returns it and its footprint radius."""
    label = CLASSES.index(cls)
    rgb = _jitter(rng, COLOURS[colour], 0.07)
    pattern = WOOD if colour == "wooden" else _pick(rng, (PLAIN, PLAIN, HSTRIPES, VSTRIPES, CHECKER))
    yaw = rng.uniform(0, math.pi)
    if cls == "sphere":
        r = rng.uniform(0.3, 0.9)
        parts = [_quadric(x, z, r, 1.0, r * r, 0.0, 2 * r, rgb, pattern, label, inst)]
        foot = r
    elif cls == "cylinder":
        r, h = rng.uniform(0.2, 0.55), rng.uniform(0.5, 2.0)
        parts = [_quadric(x, z, 0.0, 0.0, r * r, 0.0, h, rgb, pattern, label, inst)]
        foot = r
    elif cls == "cone":
        r, h = rng.uniform(0.3, 0.8), rng.uniform(0.6, 2.0)
        s = r / h
        parts = [_quadric(x, z, h, -s * s, 0.0, 0.0, h, rgb, pattern, label, inst)]
        foot = r
    elif cls == "box":
        w, d, h = rng.uniform(0.4, 1.5, size=3)
        parts = [_box(x, z, yaw, w, d, 0.0, h, rgb, pattern, label, inst)]
        foot = 0.5 * math.hypot(w, d)
    elif cls == "tree":
        tr, th = rng.uniform(0.07, 0.14), rng.uniform(0.5, 1.1)
        trunk = _quadric(x, z, 0.0, 0.0, tr * tr, 0.0, th + 0.2, _jitter(rng, _TRUNK_RGB, 0.1), BARK, label, inst)
        if rng.uniform() < 0.5:
            cr, ch = rng.uniform(0.45, 0.95), rng.uniform(1.2, 2.6)
            s = cr / ch
            canopy = _quadric(x, z, th + ch, -s * s, 0.0, th, th + ch, rgb, LEAVES, label, inst)
        else:
            cr = rng.uniform(0.5, 1.0)
            cy = th + 0.8 * cr
            canopy = _quadric(x, z, cy, 1.0, cr * cr, cy - cr, cy + cr, rgb, LEAVES, label, inst)
        parts, foot = [trunk, canopy], cr
    elif cls == "house":
        w, d, h = rng.uniform(1.4, 3.0), rng.uniform(1.4, 2.6), rng.uniform(1.1, 2.0)
        rise, over = rng.uniform(0.5, 1.3), rng.uniform(0.05, 0.25)
        roof_rgb = _jitter(rng, _pick(rng, _ROOF_RGB), 0.1)
        walls = _box(x, z, yaw, w, d, 0.0, h, rgb, WOOD if colour == "wooden" else WALL, label, inst)
        roof = _roof(x, z, yaw, w + 2 * over, d + 2 * over, h, rise, roof_rgb, label, inst)
        parts, foot = [walls, roof], 0.5 * math.hypot(w + 2 * over, d + 2 * over)
    else:  # pragma: no cover - guarded by OBJECT_CLASSES
        raise ValueError(cls)
    return SceneObject(cls, colour, tuple(parts)), foot


def sample_scene(seed: int, index: int) -> Scene:
    """The scene of sample ``index`` of the world with ``seed`` (both non-negative integers)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    cam_height = float(rng.uniform(1.3, 2.6))
    cam_pitch = math.radians(rng.uniform(6.0, 22.0))
    sky = _sky(rng)
    ground = _pick(rng, tuple(_GROUND_PAIRS))
    patches = _pick(rng, _GROUND_PAIRS[ground]) if rng.uniform() < 0.5 else None
    patch_cover = float(rng.uniform(0.15, 0.45))
    noise_seed = int(rng.integers(0, 2**31 - 1))

    tan_half = math.tan(math.radians(FOV_DEG) / 2)
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []  # x, z, footprint radius
    for _ in range(int(rng.integers(1, 7))):
        if objects and rng.uniform() < REPEAT_P:  # another one of a kind already there ("two red spheres")
            twin = objects[int(rng.integers(len(objects)))]
            cls, colour = twin.cls, twin.colour
        else:
            cls = _pick(rng, OBJECT_CLASSES)
            colour = _pick(rng, _COLOUR_CHOICES[cls])
        for _try in range(20):
            dist = rng.uniform(3.0, 13.0)
            x, z = rng.uniform(-0.85, 0.85) * dist * tan_half, -dist
            obj, foot = _object(rng, cls, colour, x, z, len(objects) + 1)
            if all(math.hypot(x - px, z - pz) > foot + pr + 0.15 for px, pz, pr in placed):
                objects.append(obj)
                placed.append((x, z, foot))
                break
    return Scene(index=int(index), cam_height=cam_height, cam_pitch=cam_pitch, **sky, ground=ground,
                 patches=patches, patch_cover=patch_cover, noise_seed=noise_seed, objects=tuple(objects))


# ------------------------------------------------------------------------------------------ captions

_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_SKY_PHRASE = {"day": "under a blue sky", "sunset": "at sunset", "overcast": "under an overcast sky",
               "night": "at night"}


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _counted(count: int, colour: str, noun: str) -> str:
    if count == 1:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {noun}"
    return f"{_NUMBERS[count]} {colour} {plural(noun)}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, visible: dict[int, int], patches_visible: bool) -> str:
    """Describe ``scene``, naming only objects seen.

    ``visible`` maps instance id -> pixels seen in the visibility probe; groups of the same colour
    and class are counted ("two red spheres") and listed most visible first. Grammar::

        caption := [objects " on "] ground [" and " patches] " " sky      (objects present)
                 | "an empty field of " ground [" and " patches] " " sky
        objects := group ("," group)* " and " group  ;  group := ("a"|"an"|two..six) colour class[s]
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for inst, obj in enumerate(scene.objects, start=1):
        if visible.get(inst, 0) > 0:
            g = groups.setdefault((obj.cls, obj.colour), [0, 0])
            g[0] += 1
            g[1] += visible[inst]
    order = sorted(groups, key=lambda k: (-groups[k][1], CLASSES.index(k[0]), list(COLOURS).index(k[1])))
    ground = scene.ground + (f" and {scene.patches}" if scene.patches and patches_visible else "")
    sky = _SKY_PHRASE[scene.sky]
    if not order:
        return f"an empty field of {ground} {sky}"
    things = _join([_counted(groups[k][0], k[1], k[0]) for k in order])
    return f"{things} on {ground} {sky}"
