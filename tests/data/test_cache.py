"""The preprocessing cache, and the preprocessors on real photos (scikit-image, offline)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import DataConfig
from piti_core.data.cache import (cache_dir, cached_conditions, get_preprocessor, piti_home, register_preprocessor,
                                  Preprocessor)
from piti_core.data.dataset import build_dataset
from piti_core.data.index import build_index
from piti_core.data.preprocess import canny_edges, depth_from_disparity, normals_from_depth
from piti_core.errors import DataError, UsageError

from .conftest import snapshot, write_folder

skdata = pytest.importorskip("skimage.data")


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, image, *, threshold):
        self.calls += 1
        return (image.mean(-1) > threshold).astype(np.uint8)


def test_cache_reuse_and_rebuild(tmp_path, _piti_home):
    root = write_folder(tmp_path / "ds", n=5, kinds=("labels",))
    index = build_index(root)
    before = snapshot(root)
    fn = Counting()
    first = cached_conditions(index, "mean-threshold", fn, "1", {"threshold": 100})
    assert fn.calls == 5 and first.built == 5 and first.reused == 0 and len(first) == 5
    assert first.directory.is_relative_to(piti_home()) and piti_home() == _piti_home
    manifest = json.loads((first.directory / "manifest.json").read_text())
    assert (manifest["preprocessor"], manifest["version"], manifest["params"]) == ("mean-threshold", "1",
                                                                                   {"threshold": 100})
    assert set(manifest["files"]) == {f"s{i:03d}" for i in range(5)}
    assert np.load(first["s000"]).shape == (16, 24)

    events = []
    again = cached_conditions(index, "mean-threshold", fn, "1", {"threshold": 100}, events.append)
    assert fn.calls == 5 and again.reused == 5 and again.built == 0  # second run: nothing recomputed
    assert [e["done"] for e in events] == [1, 2, 3, 4, 5] and events[-1]["total"] == 5

    other = cached_conditions(index, "mean-threshold", fn, "1", {"threshold": 50})  # new params: rebuild
    assert fn.calls == 10 and other.directory != first.directory
    cached_conditions(index, "mean-threshold", fn, "2", {"threshold": 100})  # new version: rebuild
    assert fn.calls == 15

    img = root / "images" / "s002.png"
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(img)  # a changed file: only it is rebuilt
    os.utime(img, ns=(1, 1))
    fn.calls = 0
    changed = cached_conditions(build_index(root), "mean-threshold", fn, "1", {"threshold": 100})
    assert fn.calls == 1 and changed.reused == 4 and not np.load(changed["s002"]).any()
    assert snapshot(root).keys() == before.keys()
    assert {k: v for k, v in snapshot(root).items() if k not in ("images/s002.png", "images", ".")} == \
        {k: v for k, v in before.items() if k not in ("images/s002.png", "images", ".")}


def test_cache_skip_bad_and_key_by_path(tmp_path):
    root = write_folder(tmp_path / "ds", n=4, kinds=())
    (root / "images" / "s001.png").write_bytes(b"garbage")
    fn = Counting()
    with pytest.raises(DataError, match="s001.png: not an image"):
        cached_conditions(build_index(root), "t", fn, "1", {"threshold": 1})
    res = cached_conditions(build_index(root), "t", fn, "1", {"threshold": 1}, skip_bad=True)
    assert len(res) == 3 and [p.stem for p in res.skipped] == ["s001"]
    assert cache_dir(root, "t", "1", {"threshold": 1}) != cache_dir(tmp_path / "other" / "ds", "t", "1",
                                                                     {"threshold": 1})


def test_dataset_reuses_derived_conditions(tmp_path):
    root = write_folder(tmp_path / "ds", n=4, kinds=("depth",))
    events = []
    cfg = DataConfig(root=str(root), val_fraction=0.0)
    build_dataset(cfg, "train", fields=("normals", "edges"), image_size=8, callback=events.append)
    built = {e["name"]: e["built"] for e in events if e["event"] == "preprocess"}
    assert built == {"normals-from-depth": 4, "edges-canny": 4}
    events.clear()
    ds = build_dataset(cfg, "train", fields=("normals", "edges"), image_size=8, callback=events.append)
    assert {e["name"]: (e["built"], e["reused"]) for e in events if e["event"] == "preprocess"} == \
        {"normals-from-depth": (0, 4), "edges-canny": (0, 4)}
    assert ds[0]["normals"].shape == (3, 8, 8)


def test_registry():
    assert get_preprocessor("edges-canny").produces == "edges"
    with pytest.raises(UsageError, match="unknown preprocessor 'hed'.*edges-canny"):
        get_preprocessor("hed")
    pre = Preprocessor("test-identity", "edges", "image", lambda x: x[..., 0] > 0, "1")
    register_preprocessor(pre)
    register_preprocessor(pre)  # same object again: fine
    with pytest.raises(UsageError, match="already registered"):
        register_preprocessor(Preprocessor("test-identity", "edges", "image", lambda x: x, "2"))


# ------------------------------------------------------------------------------ real photos


def test_real_photos_load_offline():
    """These scikit-image photos ship with the package (no pooch download)."""
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(skdata, name)()
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    left, right, disp = skdata.stereo_motorcycle()
    assert left.shape == right.shape == (500, 741, 3) and disp.shape == (500, 741)


def test_canny_edges_on_a_real_photo():
    from scipy import ndimage

    img = skdata.astronaut()
    edges = canny_edges(img).astype(bool)
    import kornia

    x = torch.from_numpy(img[:128, :128]).permute(2, 0, 1)[None].float() / 255
    ref = kornia.filters.canny(x, hysteresis=True)[1][0, 0].numpy() > 0
    assert np.array_equal(canny_edges(img[:128, :128]).astype(bool), ref)  # same as kornia's own hysteresis
    assert 0.02 < edges.mean() < 0.3  # non-trivial
    gray = img.astype(np.float64).mean(-1)
    mag = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    assert mag[edges].mean() > 3 * mag[~edges].mean()  # edges sit on strong gradients
    strong = mag > np.percentile(mag, 99)
    near = ndimage.binary_dilation(edges, iterations=2)
    assert near[strong].mean() > 0.8  # and most strong gradients have an edge nearby


def test_stereo_depth_to_normals():
    _, _, disp = skdata.stereo_motorcycle()
    # calibration of the downsampled pair (skimage.data.stereo_motorcycle docstring)
    depth = depth_from_disparity(disp, focal=994.978, baseline=0.193001, doffs=31.086)
    known = np.isfinite(depth)
    assert known.mean() > 0.9 and not np.isfinite(depth[~np.isfinite(disp)]).any()
    assert 1.0 < np.median(depth[known]) < 4.0  # metres: a motorbike a few metres away
    normals = normals_from_depth(depth, focal=994.978, cx=311.193, cy=254.877)
    norm = np.linalg.norm(normals, axis=-1)
    valid = norm > 0
    assert valid.mean() > 0.75 and np.allclose(norm[valid], 1.0, atol=1e-4)
    assert not valid[~known].any()
    assert (normals[..., 2][valid] > 0).mean() > 0.95  # surfaces face the camera
    assert np.median(normals[..., 2][valid]) > 0.5


def test_real_photos_as_a_folder_data_set(tmp_path):
    """Photos of different aspect ratios, edges derived with Canny and cached."""
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()).save(root / "images" / f"{name}.jpg", quality=90)
    before = snapshot(root)
    ds = build_dataset(DataConfig(root=str(root), val_fraction=0.0), "train", fields=("edges",), image_size=32,
                       cond_size=64, train=False)
    assert len(ds) == 3 and ds.meta.name == "photos"
    from scipy import ndimage

    for i in range(3):
        s = ds[i]
        assert s["image"].shape == (3, 32, 32) and s["edges"].shape == (1, 64, 64)
        assert 0.02 < s["edges"].mean() < 0.4
        hr = build_dataset(DataConfig(root=str(root), val_fraction=0.0), "train", fields=(), image_size=64,
                           train=False)[i]["image"].mean(0).numpy()  # the photo at the condition size
        mag = np.hypot(ndimage.sobel(hr, 0), ndimage.sobel(hr, 1))
        edges = s["edges"][0].numpy() > 0
        assert mag[edges].mean() > 2 * mag[~edges].mean()  # the cached edges line up with the cropped photo
    assert snapshot(root) == before
    assert torch.is_tensor(s["edges"])


def test_normals_from_depth_match_the_toy_world(tmp_path):
    """Our depth -> normals (and its camera convention) agrees with the renderer's own normals."""
    toyworld = pytest.importorskip("piti_core.data.toyworld")
    from piti_core.data.readers import read_depth, read_normals

    root = toyworld.write_toyworld(tmp_path / "world", 3, 64, 0)
    index = build_index(root)
    errors = []
    for s in index.samples:
        depth, valid = read_depth(s.conditions["depth"], index.meta)
        truth, ok = read_normals(s.conditions["normals"], index.meta)
        est = normals_from_depth(np.where(valid, depth, np.nan), focal=index.meta.focal)
        both = ok & (np.linalg.norm(est, axis=-1) > 0)
        errors.append(np.degrees(np.arccos(np.clip((est * truth).sum(-1)[both], -1, 1))))
    errors = np.concatenate(errors)
    assert np.median(errors) < 3 and (errors < 15).mean() > 0.85


@pytest.mark.parametrize("home_kind", ["file", "under-a-file", "read-only"])
def test_unusable_piti_home_fails_before_preprocessing(home_kind, tmp_path, monkeypatch):
    from piti_core.data import cache

    root = write_folder(tmp_path / "ds", n=2, kinds=("labels",))
    index = build_index(root)
    (tmp_path / "afile").write_text("not a folder\n")
    home = {"file": tmp_path / "afile", "under-a-file": tmp_path / "afile" / "home"}.get(home_kind, tmp_path / "ro")
    monkeypatch.setenv("PITI_HOME", str(home))
    if home_kind == "read-only":  # a read-only folder, also when the tests run as root
        monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    fn = Counting()
    with pytest.raises(DataError, match=rf"PITI_HOME={home} is not a folder piti can write") as info:
        cached_conditions(index, "mean-threshold", fn, "1", {"threshold": 100})
    assert "internal" not in str(info.value) and fn.calls == 0
    assert (tmp_path / "afile").read_text() == "not a folder\n"
