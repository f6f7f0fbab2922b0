"""The toy world: piti's built-in, procedural, seeded data set.

Each sample is a ray-cast 3D scene — a pinhole camera above a ground plane of grass, sand, water,
rock or snow, a day / sunset / overcast / night sky, a directional light with Lambert shading and
cast shadows, and 1-6 objects (spheres, boxes, cylinders, cones, trees, houses) with named colours
and simple textures — and comes with every condition piti's tasks need::

    images   (n, S, S, 3) uint8    the rendered RGB image
    labels   (n, S, S)    uint8    class ids, indices into CLASSES (0 sky, 1-5 ground, 6-11 objects)
    depth    (n, S, S)    float32  camera z-distance in metres, clipped to 65.535; 0 = sky (no depth)
    normals  (n, S, S, 3) float32  unit normals in camera space (OpenGL: +x right, +y up, +z toward
                                   the camera); (0, 0, 0) = sky
    edges    (n, S, S)    uint8    {0, 255}: outlines, depth jumps and strong image edges
    instances(n, S, S)    uint8    object instance 1..6 (0: ground or sky); not written to disk
    captions list[str]             e.g. "two red spheres and a wooden box on sand at sunset"

Sample ``i`` of world ``seed`` is drawn from its own generator seeded with ``(seed, i)``, so it does
not depend on ``n``, on ``start``, on batching or on the resolution (the scene and caption are the
same at 64 and 256 pixels). The camera is fixed: vertical field of view :data:`FOV_DEG`, principal
point at the image centre, square pixels.

The generator is documented in docs/datasets.md ("The toy world").
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np

from piti_core.data.toyworld_edges import edge_map
from piti_core.data.toyworld_render import MAX_DEPTH_M, render_batch, trace
from piti_core.data.toyworld_scene import (  # noqa: F401  (re-exported)
    CLASSES, COLOURS, FOV_DEG, GROUND_MATERIALS, IGNORE_INDEX, OBJECT_CLASSES, PALETTE, SKIES, caption, sample_scene,
)
from piti_core.errors import UsageError
from piti_core.io import atomic_write_text

__all__ = [
    "CLASSES", "PALETTE", "IGNORE_INDEX", "GROUND_MATERIALS", "OBJECT_CLASSES", "COLOURS", "SKIES", "FOV_DEG",
    "MAX_DEPTH_M", "VERSION", "FOLDERS", "render_toyworld", "write_toyworld", "toyworld_grid", "dataset_info",
    "sample_scene",
]

VERSION = "1"
#: Sub-folders of a written world, one PNG per sample in each.
FOLDERS = ("images", "labels", "depth", "normals", "edges")
#: Captions count the objects seen in a fixed 32 x 32 render (so they do not depend on the output
#: size); an object needs this many of its 1024 pixels to be named, patches of a second ground
#: material need PATCH_MIN_FRACTION of them.
PROBE_SIZE = 32
MIN_VISIBLE_PIXELS = 2
PATCH_MIN_FRACTION = 0.01
_BATCH_PIXELS = 2**17  # scenes rendered together: bounds memory at ~100 MB
_CHUNK_BATCHES = 8  # the writer renders this many batches at a time


def _batch_size(size: int) -> int:
    return max(1, _BATCH_PIXELS // (size * size))


def _part_counts(scene) -> tuple[int, int]:
    parts = [p.kind for obj in scene.objects for p in obj.parts]
    return parts.count("quadric"), parts.count("poly")


def _captions(scenes) -> list[str]:
    tr = trace(scenes, PROBE_SIZE)
    out = []
    for b, scene in enumerate(scenes):
        counts = np.bincount(tr["instance"][b], minlength=len(scene.objects) + 1)
        visible = {i: int(c) for i, c in enumerate(counts) if i > 0 and c >= MIN_VISIBLE_PIXELS}
        patch_px = 0 if scene.patches is None else int((tr["label"][b] == CLASSES.index(scene.patches)).sum())
        out.append(caption(scene, visible, patch_px >= PATCH_MIN_FRACTION * PROBE_SIZE**2))
    return out


def _render_chunk(scenes, size: int) -> dict:
    """Render scenes in batches of similar part counts (less padding, same bytes), in input order."""
    order = sorted(range(len(scenes)), key=lambda i: _part_counts(scenes[i]))
    step = _batch_size(size)
    result: dict = {}
    captions = [""] * len(scenes)
    for k in range(0, len(order), step):
        idx = order[k:k + step]
        batch = [scenes[i] for i in idx]
        out = render_batch(batch, size)
        out["edges"] = edge_map(out["images"], out.pop("seg"), out["depth"])
        for key, value in out.items():
            if key not in result:
                result[key] = np.zeros((len(scenes),) + value.shape[1:], value.dtype)
            result[key][idx] = value
        for i, text in zip(idx, _captions(batch)):
            captions[i] = text
    result["captions"] = captions
    return result


def render_toyworld(n: int, size: int, seed: int, start: int = 0) -> dict:
    """Samples ``start .. start + n - 1`` of world ``seed`` at ``size`` x ``size`` (see module doc)."""
    if n < 0 or size < 1 or start < 0 or seed < 0:
        raise UsageError(f"toy world: n, start and seed must be >= 0 and size >= 1 (got n={n}, size={size}, "
                         f"start={start}, seed={seed})")
    if n == 0:
        shapes = {"images": (3,), "normals": (3,)}
        out = {k: np.zeros((0, size, size) + shapes.get(k, ()), np.float32 if k in ("depth", "normals") else np.uint8)
               for k in ("images", "labels", "depth", "normals", "edges", "instances")}
        return dict(out, captions=[])
    return _render_chunk([sample_scene(seed, i) for i in range(start, start + n)], size)


# ------------------------------------------------------------------------------------------ writing


def dataset_info(n: int, size: int, seed: int) -> dict:
    """The ``dataset.json`` of a written world."""
    return {
        "name": "toyworld", "format": "folder", "version": 1, "seed": seed, "size": size, "n": n,
        "classes": list(CLASSES), "palette": [list(c) for c in PALETTE], "ignore_index": IGNORE_INDEX,
        "depth": {"encoding": "png16", "scale": 0.001, "units": "m", "invalid": 0},
        "normals": {"encoding": "rgb", "convention": "opengl",
                    "frame": "camera, +x right, +y up, +z toward camera", "invalid": [0, 0, 0]},
        "camera": {"fov_deg": FOV_DEG, "focal": size / 2 / math.tan(math.radians(FOV_DEG) / 2)},
        "generator": f"piti toyworld {VERSION}",
    }


def encode_depth_png16(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 stays 0 = no depth)."""
    return np.round(np.clip(depth, 0, MAX_DEPTH_M) * 1000).astype(np.uint16)


def encode_normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit normals -> RGB (n + 1) / 2 * 255; zero vectors (sky) -> (0, 0, 0)."""
    rgb = np.round((np.clip(normals, -1, 1) + 1) * 127.5).astype(np.uint8)
    return np.where((np.abs(normals).sum(-1) == 0)[..., None], np.uint8(0), rgb)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=6)  # no metadata: same bytes each run


_STEM = re.compile(r"^\d{6,}\.png$")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; choose a folder for the toy world")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} is not empty; pass --overwrite to replace it or choose another folder")
        if not _is_toyworld(out):
            raise UsageError(f"{out} holds files piti did not write (no toy-world dataset.json); piti never "
                             "replaces them: choose another folder")
        for sub in FOLDERS:  # remove a previous world's files only, never anything else
            for f in (out / sub).glob("*.png") if (out / sub).is_dir() else ():
                if _STEM.match(f.name):
                    f.unlink()
        for name in ("dataset.json", "captions.jsonl"):
            (out / name).unlink(missing_ok=True)
    for sub in FOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _is_toyworld(out: Path) -> bool:
    """Whether ``out/dataset.json`` is one :func:`write_toyworld` wrote."""
    try:
        info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("generator", "")).startswith("piti toyworld")


def write_toyworld(out_dir, n: int, size: int, seed: int, *, callback: Callable[[int, int], None] | None = None,
                   overwrite: bool = False) -> Path:
    """Render ``n`` samples of world ``seed`` at ``size`` px into the paired-folder layout::

        OUT/dataset.json  images/ labels/ depth/ normals/ edges/  (<stem>.png each)  captions.jsonl

    Stems are the zero-padded sample indices (000000, 000001, ...). ``callback(done, total)`` is called
    once per sample written. ``dataset.json`` is written last: a folder without it is incomplete.
    Refuses (:class:`UsageError`) a non-empty ``out_dir`` unless ``overwrite``, which first removes
    a previous world's files (stem PNGs, dataset.json, captions.jsonl) and nothing else.
    Same arguments, same bytes.
    """
    if n < 1 or size < 8 or seed < 0:
        raise UsageError(f"toy world: need n >= 1, size >= 8 and seed >= 0 (got n={n}, size={size}, seed={seed})")
    out = Path(out_dir)
    _prepare(out, overwrite)
    width = max(6, len(str(n - 1)))
    lines = []
    chunk = _CHUNK_BATCHES * _batch_size(size)
    for first in range(0, n, chunk):
        idx = range(first, min(first + chunk, n))
        batch = render_toyworld(len(idx), size, seed, start=first)
        for k, i in enumerate(idx):
            stem = f"{i:0{width}d}"
            _save_png(batch["images"][k], out / "images" / f"{stem}.png")
            _save_png(batch["labels"][k], out / "labels" / f"{stem}.png")
            _save_png(encode_depth_png16(batch["depth"][k]), out / "depth" / f"{stem}.png")
            _save_png(encode_normals_rgb(batch["normals"][k]), out / "normals" / f"{stem}.png")
            _save_png(batch["edges"][k], out / "edges" / f"{stem}.png")
            lines.append(json.dumps({"stem": stem, "caption": batch["captions"][k]}) + "\n")
            if callback is not None:
                callback(i + 1, n)
    atomic_write_text(out / "captions.jsonl", "".join(lines))
    atomic_write_text(out / "dataset.json", json.dumps(dataset_info(n, size, seed), indent=2) + "\n")
    return out


# --------------------------------------------------------------------------------------------- grid

_DEPTH_RAMP = np.array([(13, 8, 135), (126, 3, 168), (204, 71, 120), (248, 149, 64), (240, 249, 33)], np.float32)


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (H, W) -> RGB: inverse depth normalised per image on a plasma-like ramp, sky black."""
    valid = depth > 0
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    disp = np.where(valid, 1 / np.maximum(depth, 1e-6), 0)
    lo, hi = disp[valid].min(), disp[valid].max()
    x = (disp - lo) / max(hi - lo, 1e-9) * (len(_DEPTH_RAMP) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(_DEPTH_RAMP) - 2)
    f = (x - i)[..., None]
    rgb = _DEPTH_RAMP[i] * (1 - f) + _DEPTH_RAMP[i + 1] * f
    return np.where(valid[..., None], np.round(rgb), 0).astype(np.uint8)


def toyworld_grid(out_png, n: int = 8, size: int = 128, seed: int = 0, start: int = 0) -> Path:
    """Write a preview PNG: one row per sample — image | labels | depth | normals | edges — with
    its caption beside it."""
    from PIL import Image, ImageDraw

    data = render_toyworld(n, size, seed, start=start)
    palette = np.array(PALETTE, np.uint8)
    gap, text_w, head = 4, 300, 16
    cell = size + gap
    canvas = Image.new("RGB", (5 * cell + text_w, head + n * cell), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(("image", "labels", "depth", "normals", "edges")):
        draw.text((j * cell + 2, 2), title, fill=(0, 0, 0))
    for r in range(n):
        panels = [data["images"][r], palette[data["labels"][r]], colour_depth(data["depth"][r]),
                  encode_normals_rgb(data["normals"][r]), np.repeat(data["edges"][r][..., None], 3, -1)]
        y = head + r * cell
        for j, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (j * cell, y))
        text = "\n".join(textwrap.wrap(f"{start + r}: {data['captions'][r]}", width=text_w // 6 - 2))
        draw.multiline_text((5 * cell + 4, y + 2), text, fill=(0, 0, 0))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG", optimize=True)
    return out
