"""The toy world: determinism, conventions of every output, geometry, captions and the writer."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from piti_core.data import toyworld as tw
from piti_core.data import toyworld_geom, toyworld_render
from piti_core.data.toyworld_scene import (
    CHECKER, PLAIN, POLY_KEYS, QUADRIC_KEYS, Scene, SceneObject, _box, _quadric, _roof, plural, sample_scene,
)
from piti_core.errors import UsageError


@pytest.fixture(scope="module")
def world32():
    return tw.render_toyworld(12, 32, seed=0)


@pytest.fixture(scope="module")
def world64():
    return tw.render_toyworld(8, 64, seed=1)


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ray_dirs(size):
    """Camera-space directions of the pixel centres (+x right, +y up, looking down -z)."""
    tan_half = math.tan(math.radians(tw.FOV_DEG) / 2)
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * tan_half
    x, y = np.meshgrid(c, -c)
    return np.stack([x, y, -np.ones_like(x)], -1)


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_and_rerun_with_overwrite(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tw.write_toyworld(a, 6, 32, seed=3)
    tw.write_toyworld(b, 6, 32, seed=3)
    first = _digest(a)
    assert first == _digest(b)
    tw.write_toyworld(a, 6, 32, seed=3, overwrite=True)
    assert _digest(a) == first


def test_different_seed_differs():
    a = tw.render_toyworld(3, 32, seed=0)
    b = tw.render_toyworld(3, 32, seed=1)
    for i in range(3):
        assert not np.array_equal(a["images"][i], b["images"][i])
    assert a["captions"] != b["captions"]


def test_sample_does_not_depend_on_n_start_or_batching(world32, monkeypatch):
    few = tw.render_toyworld(3, 32, seed=0)
    late = tw.render_toyworld(3, 32, seed=0, start=7)
    monkeypatch.setattr(tw, "_BATCH_PIXELS", 32 * 32 * 2)  # batches of two scenes instead of 128
    small_batches = tw.render_toyworld(12, 32, seed=0)
    for key in ("images", "labels", "depth", "normals", "edges", "instances"):
        assert np.array_equal(few[key], world32[key][:3]), key
        assert np.array_equal(late[key], world32[key][7:10]), key
        assert np.array_equal(small_batches[key], world32[key]), key
    assert few["captions"] == world32["captions"][:3]
    assert late["captions"] == world32["captions"][7:10]


def test_scene_and_caption_do_not_depend_on_resolution(world32):
    big = tw.render_toyworld(4, 96, seed=0)
    assert big["captions"] == world32["captions"][:4]
    # The same scene: labels at 96 px, sampled at the 32 px pixel centres, mostly agree.
    assert (big["labels"][:, 1::3, 1::3] == world32["labels"][:4]).mean() > 0.97


def test_culling_is_exact(monkeypatch):
    """Bounding-sphere culling only skips work: intersecting every (ray, part) pair gives the same bytes."""
    scenes = [sample_scene(5, i) for i in range(6)]
    culled = toyworld_render.render_batch(scenes, 40)

    def every_pixel(parts, origin, basis, size):
        return np.nonzero(np.broadcast_to(parts.valid[:, None, :], (len(scenes), size * size, parts.valid.shape[1])))

    def every_lit_pixel(p, light, parts, active):
        return np.nonzero(parts.valid[:, None, :] & active[..., None])

    monkeypatch.setattr(toyworld_geom, "screen_candidates", every_pixel)
    monkeypatch.setattr(toyworld_geom, "shadow_candidates", every_lit_pixel)
    brute = toyworld_render.render_batch(scenes, 40)
    for key in culled:
        assert np.array_equal(culled[key], brute[key]), key


# -------------------------------------------------------------------------------- conventions


def test_constants():
    assert len(tw.CLASSES) == len(tw.PALETTE) == 12
    assert tw.CLASSES[0] == "sky" and tw.CLASSES[1:6] == tw.GROUND_MATERIALS
    assert set(tw.OBJECT_CLASSES) == {"sphere", "box", "cylinder", "cone", "tree", "house"}
    assert len(set(tw.PALETTE)) == len(tw.PALETTE)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in tw.PALETTE)
    assert tw.IGNORE_INDEX == 255 and tw.IGNORE_INDEX >= len(tw.CLASSES)


def test_dtypes_shapes_and_ranges(world64):
    n, s = 8, 64
    assert world64["images"].shape == (n, s, s, 3) and world64["images"].dtype == np.uint8
    assert world64["labels"].shape == (n, s, s) and world64["labels"].dtype == np.uint8
    assert world64["depth"].shape == (n, s, s) and world64["depth"].dtype == np.float32
    assert world64["normals"].shape == (n, s, s, 3) and world64["normals"].dtype == np.float32
    assert world64["edges"].dtype == np.uint8 and set(np.unique(world64["edges"])) <= {0, 255}
    assert len(world64["captions"]) == n
    labels = world64["labels"]
    assert labels.max() < len(tw.CLASSES)
    sky = labels == 0
    assert sky.any() and (~sky).any()
    depth = world64["depth"]
    assert np.isfinite(depth).all() and (depth >= 0).all() and depth.max() <= tw.MAX_DEPTH_M
    assert np.array_equal(depth == 0, sky), "depth is 0 exactly on the sky"
    assert (np.abs(world64["normals"][sky]) == 0).all()
    assert ((world64["instances"] > 0) == (labels >= 6)).all()
    for e in world64["edges"]:  # edges are sparse lines, not blobs
        assert 0.01 < (e > 0).mean() < 0.4


def test_normals_unit_and_facing_the_camera(world64):
    valid = world64["labels"] > 0
    nrm = world64["normals"]
    length = np.linalg.norm(nrm, axis=-1)
    assert np.allclose(length[valid], 1, atol=1e-4)
    view = -_ray_dirs(64)  # toward the camera
    assert ((nrm * view).sum(-1)[valid] > 0).all()
    ground = (world64["labels"] >= 1) & (world64["labels"] <= 5)
    assert (nrm[ground][:, 1] > 0.9).all() and (nrm[ground][:, 2] > 0).all()  # camera pitched down
    assert np.allclose(nrm[ground][:, 0], 0, atol=1e-6)


def test_ground_depth_is_a_plane_seen_from_above(world64):
    """Camera z-distance of the ground is constant along a row and grows toward the horizon."""
    ground = (world64["labels"] >= 1) & (world64["labels"] <= 5)
    for d, g in zip(world64["depth"], ground):
        rows = [r for r in range(64) if g[r].any()]
        per_row = [d[r][g[r]] for r in rows]
        assert all(v.max() == v.min() for v in per_row)
        assert all(a[0] > b[0] or a[0] == tw.MAX_DEPTH_M for a, b in zip(per_row, per_row[1:]))


def _scene(objects, sun_elev_deg=60.0, sun_azim_deg=180.0, ground="snow"):
    e, a = math.radians(sun_elev_deg), math.radians(sun_azim_deg)
    return Scene(index=0, cam_height=2.0, cam_pitch=math.radians(15), sky="day",
                 sun_dir=(math.cos(e) * math.sin(a), math.sin(e), -math.cos(e) * math.cos(a)),
                 sun_rgb=(1.0, 1.0, 1.0), ambient_rgb=(0.3, 0.3, 0.3), zenith_rgb=(0.2, 0.4, 0.9),
                 horizon_rgb=(0.7, 0.8, 1.0), clouds=0.0, fog_dist=1e6, ground=ground, patches=None,
                 patch_cover=0.3, noise_seed=1, objects=tuple(objects))


def test_sphere_depth_matches_the_analytic_intersection_and_casts_a_shadow():
    r, dist, size = 0.8, 6.0, 64
    sphere = SceneObject("sphere", "red", (_quadric(0.0, -dist, r, 1.0, r * r, 0.0, 2 * r, (0.8, 0.1, 0.1),
                                                    PLAIN, tw.CLASSES.index("sphere"), 1),))
    out = toyworld_render.render_batch([_scene([sphere])], size)
    # Analytic ray-sphere intersection in float64 for every pixel.
    pitch = math.radians(15)
    cam = _ray_dirs(size)
    up, back = np.array([0, math.cos(pitch), -math.sin(pitch)]), np.array([0, math.sin(pitch), math.cos(pitch)])
    d = cam[..., :1] * np.array([1, 0, 0]) + cam[..., 1:2] * up - back  # world directions, forward part 1
    oc = np.array([0, 2.0, 0]) - np.array([0, r, -dist])
    a, b, c = (d * d).sum(-1), 2 * (d * oc).sum(-1), (oc * oc).sum() - r * r
    disc = b * b - 4 * a * c
    hit = disc > 1e-3  # away from the silhouette
    t = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
    mask = out["labels"][0] == tw.CLASSES.index("sphere")
    assert hit.sum() > 50 and mask[hit].all()
    assert np.allclose(out["depth"][0][hit], t[hit], rtol=1e-4)
    # Shadow: ground points whose ray to the sun meets the sphere are much darker than lit ground.
    sun = np.array(_scene([]).sun_dir)
    ground = out["labels"][0] == tw.CLASSES.index("snow")
    p = np.array([0, 2.0, 0]) + d * out["depth"][0][..., None]
    pc = p - np.array([0, r, -dist])
    bb = (pc * sun).sum(-1)
    shadowed = ground & (bb * bb - ((pc * pc).sum(-1) - r * r) > 1e-2) & (bb < 0)
    lit = ground & ~shadowed
    lum = out["images"][0].astype(float).mean(-1)
    assert shadowed.sum() > 20
    assert lum[shadowed].mean() < 0.75 * lum[lit].mean()


def test_box_faces_and_stacked_labels():
    box = SceneObject("box", "blue", (_box(0.0, -5.0, 0.3, 1.2, 1.0, 0.0, 1.0, (0.1, 0.2, 0.9), CHECKER,
                                           tw.CLASSES.index("box"), 1),))
    out = toyworld_render.render_batch([_scene([box])], 48)
    mask = out["labels"][0] == tw.CLASSES.index("box")
    assert mask.sum() > 30
    normals = out["normals"][0][mask]
    # A box shows at most three faces, so its normals take at most three directions.
    assert len(np.unique(np.round(normals, 3), axis=0)) <= 3


def _inside(part, pts):
    """Implicit inside test of a part at points (..., 3), float64: the definition, not the ray maths."""
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    if part.kind == "quadric":
        q = dict(zip(QUADRIC_KEYS, part.params))
        f = (x - q["cx"]) ** 2 + (z - q["cz"]) ** 2 + q["alpha"] * (y - q["yc"]) ** 2 - q["rho"]
        return (f <= 0) & (y >= q["y0"]) & (y <= q["y1"])
    p = dict(zip(POLY_KEYS, part.params))
    ok = np.ones(x.shape, bool)
    for k in range(3):
        v = x * p[f"s{k}x"] + y * p[f"s{k}y"] + z * p[f"s{k}z"]
        ok &= (v >= p[f"s{k}lo"]) & (v <= p[f"s{k}hi"])
    for j in range(2):
        ok &= x * p[f"h{j}x"] + y * p[f"h{j}y"] + z * p[f"h{j}z"] <= p[f"h{j}d"]
    return ok


def test_cones_cylinders_and_houses_match_ray_marching():
    """Depth and labels of every part kind agree with marching each ray through the implicit solids
    (including a wide, flat cone whose surface is steeper than the camera rays)."""
    sphere_l, cone_l, cyl_l, house_l = (tw.CLASSES.index(c) for c in ("sphere", "cone", "cylinder", "house"))
    grey = (0.5, 0.5, 0.5)
    objects = [
        SceneObject("cone", "red", (_quadric(-0.9, -3.2, 0.6, -(1.1 / 0.6) ** 2, 0.0, 0.0, 0.6, grey, PLAIN,
                                             cone_l, 1),)),
        SceneObject("cylinder", "blue", (_quadric(0.9, -4.0, 0.0, 0.0, 0.16, 0.0, 1.4, grey, PLAIN, cyl_l, 2),)),
        SceneObject("house", "white", (_box(0.3, -7.0, 0.5, 2.0, 1.6, 0.0, 1.3, grey, PLAIN, house_l, 3),
                                       _roof(0.3, -7.0, 0.5, 2.3, 1.9, 1.3, 0.9, grey, house_l, 3))),
        SceneObject("sphere", "red", (_quadric(-1.6, -6.0, 0.5, 1.0, 0.25, 0.0, 1.0, grey, PLAIN, sphere_l, 4),)),
    ]
    size, step = 32, 0.004
    out = toyworld_render.render_batch([_scene(objects)], size)
    pitch = math.radians(15)
    cam = _ray_dirs(size).reshape(-1, 3)
    up, back = np.array([0, math.cos(pitch), -math.sin(pitch)]), np.array([0, math.sin(pitch), math.cos(pitch)])
    d = cam[:, :1] * np.array([1, 0, 0]) + cam[:, 1:2] * up - back
    t = np.arange(step, 12, step)
    pts = np.array([0, 2.0, 0]) + t[None, :, None] * d[:, None, :]  # (pixels, steps, 3)
    first = np.full(len(d), np.inf)
    label = np.zeros(len(d), int)
    for obj in objects:
        for part in obj.parts:
            inside = _inside(part, pts)
            t_part = np.where(inside.any(1), t[inside.argmax(1)], np.inf)
            closer = t_part < first
            first[closer], label[closer] = t_part[closer], part.label
    rendered = out["labels"][0].reshape(-1)
    depth = out["depth"][0].reshape(-1)
    hit = np.isfinite(first)
    for cls in (cone_l, cyl_l, house_l, sphere_l):
        assert (label == cls).sum() > 5, tw.CLASSES[cls]
    agree = (rendered[hit] == label[hit]).mean()
    assert agree > 0.98, agree  # a few silhouette pixels may fall between march steps
    both = hit & (rendered == label)
    assert np.abs(depth[both] - first[both]).max() <= step * 1.5


# ------------------------------------------------------------------------------------ captions

_COUNT = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_PLURALS = {"spheres": "sphere", "boxes": "box", "cylinders": "cylinder", "cones": "cone", "trees": "tree",
            "houses": "house"}
_SKIES = ("under a blue sky", "at sunset", "under an overcast sky", "at night")
_CAPTION = re.compile(r"^(?:(?P<objects>.+) on |an empty field of )(?P<ground>\w+)(?: and (?P<patch>\w+))? "
                      r"(?P<sky>" + "|".join(_SKIES) + r")$")


def _parse(caption):
    m = _CAPTION.match(caption)
    assert m, caption
    counts = {}
    if m["objects"]:
        for group in re.split(r", | and ", m["objects"]):
            words = group.split()
            assert len(words) == 3 and words[0] in _COUNT and words[1] in tw.COLOURS, caption
            n, noun = _COUNT[words[0]], words[2]
            assert noun in (tw.OBJECT_CLASSES if n == 1 else _PLURALS), caption  # singular iff one
            if words[0] in ("a", "an"):
                assert words[0] == ("an" if words[1][0] in "aeiou" else "a"), caption
            cls = noun if n == 1 else _PLURALS[noun]
            counts[cls] = counts.get(cls, 0) + n
    return counts, m["ground"], m["patch"]


def test_plurals():
    assert {plural(c): c for c in tw.OBJECT_CLASSES} == _PLURALS


def test_caption_counts_match_the_visible_instances(world32):
    """At the probe's own resolution (32 px) caption counts equal the instances seen."""
    assert tw.PROBE_SIZE == 32
    for caption, labels, inst in zip(world32["captions"], world32["labels"], world32["instances"]):
        counts, ground, patch = _parse(caption)
        seen = {}
        for i in np.unique(inst[inst > 0]):
            if (inst == i).sum() >= tw.MIN_VISIBLE_PIXELS:
                cls = tw.CLASSES[int(np.bincount(labels[inst == i]).argmax())]
                seen[cls] = seen.get(cls, 0) + 1
        assert counts == seen, caption
        assert tw.CLASSES.index(ground) in labels
        if patch:
            assert (labels == tw.CLASSES.index(patch)).sum() >= tw.PATCH_MIN_FRACTION * 32 * 32


def test_caption_classes_appear_in_the_label_map(world64):
    many = tw.render_toyworld(24, 64, seed=2)
    for caption, labels in zip(world64["captions"] + many["captions"], list(world64["labels"]) + list(many["labels"])):
        counts, ground, patch = _parse(caption)
        for cls in counts:
            assert tw.CLASSES.index(cls) in labels, caption
        assert tw.CLASSES.index(ground) in labels, caption


def test_captions_cover_the_vocabulary():
    scenes = [sample_scene(0, i) for i in range(300)]
    assert {s.sky for s in scenes} == set(tw.SKIES)
    assert {s.ground for s in scenes} | {s.patches for s in scenes if s.patches} == set(tw.GROUND_MATERIALS)
    assert {o.cls for s in scenes for o in s.objects} == set(tw.OBJECT_CLASSES)
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4, 5, 6}


# -------------------------------------------------------------------------------------- writer


def test_writer_layout_and_round_trip(tmp_path):
    out = tw.write_toyworld(tmp_path / "w", 5, 32, seed=4)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "toyworld" and meta["format"] == "folder" and meta["n"] == 5 and meta["size"] == 32
    assert meta["classes"] == list(tw.CLASSES) and meta["palette"] == [list(c) for c in tw.PALETTE]
    assert meta["ignore_index"] == 255 and meta["depth"]["scale"] == 0.001 and meta["depth"]["invalid"] == 0
    assert meta["normals"]["invalid"] == [0, 0, 0] and meta["generator"].startswith("piti toyworld")
    stems = [f"{i:06d}" for i in range(5)]
    modes = {"images": "RGB", "labels": "L", "depth": "I;16", "normals": "RGB", "edges": "L"}
    for folder, mode in modes.items():
        assert sorted(p.stem for p in (out / folder).iterdir()) == stems
        with Image.open(out / folder / "000000.png") as im:
            assert im.mode == mode and im.size == (32, 32)
            assert not im.info.get("transparency") and "tIME" not in str(im.info)
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    ref = tw.render_toyworld(5, 32, seed=4)
    assert [rec["stem"] for rec in lines] == stems and [rec["caption"] for rec in lines] == ref["captions"]
    for i, stem in enumerate(stems):
        assert np.array_equal(np.asarray(Image.open(out / "images" / f"{stem}.png")), ref["images"][i])
        assert np.array_equal(np.asarray(Image.open(out / "labels" / f"{stem}.png")), ref["labels"][i])
        depth_mm = np.asarray(Image.open(out / "depth" / f"{stem}.png")).astype(np.float64)
        assert np.abs(depth_mm / 1000 - ref["depth"][i]).max() <= 0.0005 + 1e-6
        nrm = np.asarray(Image.open(out / "normals" / f"{stem}.png")).astype(np.float64) / 255 * 2 - 1
        valid = ref["labels"][i] > 0
        assert np.abs(nrm[valid] - ref["normals"][i][valid]).max() <= 1 / 255 + 1e-6
        assert (nrm[~valid] == -1).all()  # stored as (0, 0, 0)


def test_writer_progress_and_refusals(tmp_path):
    calls = []
    tw.write_toyworld(tmp_path / "w", 3, 16, seed=0, callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(UsageError, match="not empty"):
        tw.write_toyworld(tmp_path / "w", 3, 16, seed=0)
    (tmp_path / "w" / "notes.txt").write_text("mine")
    tw.write_toyworld(tmp_path / "w", 2, 16, seed=0, overwrite=True)  # fewer samples: stale ones removed
    assert sorted(p.name for p in (tmp_path / "w" / "images").iterdir()) == ["000000.png", "000001.png"]
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError):
        tw.write_toyworld(tmp_path / "f", 1, 16, seed=0, overwrite=True)
    with pytest.raises(UsageError):
        tw.write_toyworld(tmp_path / "z", 0, 16, seed=0)


def test_dataset_json_is_accepted_by_the_folder_reader(tmp_path):
    formats = pytest.importorskip("piti_core.data.formats")
    out = tw.write_toyworld(tmp_path / "w", 2, 16, seed=0)
    meta = formats.read_dataset_json(out)
    assert tuple(meta.classes) == tw.CLASSES and meta.ignore_index == 255


def test_grid(tmp_path):
    path = tw.toyworld_grid(tmp_path / "grid.png", n=2, size=32, seed=0)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.height >= 2 * 32 and im.width > 5 * 32
