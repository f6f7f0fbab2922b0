"""The shared Dataset: shapes and dtypes, keep-aspect vs squash, joint flip, two image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import DataConfig
from piti_core.data.dataset import build_dataset
from piti_core.data.transforms import resize_field

from .conftest import stripes, write_folder

ALL = ("labels", "edges", "depth", "normals")


def _red_ids(image: torch.Tensor) -> torch.Tensor:
    """The label encoded in the test images' red channel (id * 60)."""
    return (((image[0] + 1) / 2 * 255).round() / 60).round().long()


def test_keys_shapes_dtypes(folder_ds):
    cfg = DataConfig(root=str(folder_ds), val_fraction=0.0)
    seen = {}
    ds = build_dataset(cfg, "train", fields=ALL, image_sizes=(8, 16), cond_size=12, transform=lambda s: {**s, "x": 1})
    s = ds[0]
    assert s["image"].shape == (3, 8, 8) and s["image_hr"].shape == (3, 16, 16)
    assert s["image"].dtype == torch.float32 and -1 <= s["image"].min() and s["image"].max() <= 1
    assert s["labels"].shape == (12, 12) and s["labels"].dtype == torch.int64
    assert s["edges"].shape == (1, 12, 12) and set(s["edges"].unique().tolist()) <= {0.0, 1.0}
    assert s["depth"].shape == (1, 12, 12) and s["depth_valid"].dtype == torch.bool
    assert torch.isfinite(s["depth"]).all() and s["depth"][s["depth_valid"]].min() >= 1.0
    assert s["normals"].shape == (3, 12, 12)
    assert torch.allclose(s["normals"].norm(dim=0), torch.ones(12, 12), atol=1e-3)
    assert s["caption"].startswith("picture ") and s["stem"] == "s000" and s["x"] == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["labels"].shape == (3, 12, 12) and len(batch["stem"]) == 3
    # the low-res image is the high-res one downsampled (official two-step resize)
    down = resize_field("image", (s["image_hr"] + 1) / 2, 8) * 2 - 1
    assert torch.allclose(down, s["image"], atol=1e-5)
    seen.update(s)


def test_keep_aspect_vs_squash(tmp_path):
    root = write_folder(tmp_path / "wide", n=1, size=(48, 16), kinds=("labels", "depth"))
    depth = np.array(Image.open(root / "depth" / "s000.png"))
    depth[:, :3] = 0  # invalid first stripe
    Image.fromarray(depth).save(root / "depth" / "s000.png")
    src = torch.from_numpy(stripes(16, 48, 4, 0).astype(np.int64))
    keep = build_dataset(DataConfig(root=str(root), val_fraction=0.0), "train", fields=("labels", "depth"),
                         image_size=16, train=False)[0]
    assert keep["image"].shape == (3, 16, 16)
    assert torch.equal(keep["labels"], src[:, 16:32])  # centre crop, no resize
    assert torch.allclose(keep["depth"][0, 0], torch.tensor([1.0 + 0.1 * x for x in range(16, 32)]), atol=1e-5)
    squash = build_dataset(DataConfig(root=str(root), val_fraction=0.0, resize="squash"), "train",
                           fields=("labels", "depth"), image_size=16, train=False)[0]
    assert squash["image"].shape == (3, 16, 16)
    assert torch.equal(squash["labels"], src[:, 1::3])  # whole width, nearest
    assert not squash["depth_valid"][0, :, 0].any() and (squash["depth"][0, :, 0] == 0).all()  # invalid stays
    assert squash["depth_valid"][0, :, 1:].all()
    assert torch.allclose(squash["depth"][0, 5, 1:], torch.tensor([1.0 + 0.1 * x for x in range(4, 48, 3)]))
    # training crops are random along the long side but stay aligned with the labels
    ds = build_dataset(DataConfig(root=str(root), val_fraction=0.0, flip=False), "train", fields=("labels",),
                       image_size=16, train=True)
    starts = set()
    torch.manual_seed(0)
    for _ in range(12):
        s = ds[0]
        assert torch.equal(_red_ids(s["image"]), s["labels"])
        starts.add(next(o for o in range(33) if torch.equal(s["labels"], src[:, o:o + 16])))
    assert len(starts) > 3


def test_joint_flip_keeps_alignment_and_negates_normal_x(folder_ds):
    ds = build_dataset(DataConfig(root=str(folder_ds), val_fraction=0.0), "train", fields=ALL, image_size=16,
                       train=True)
    torch.manual_seed(0)
    flips = []
    for _ in range(16):
        s = ds[1]
        green = s["image"][1, 8]
        flipped = bool(green[0] > green[-1])  # the test image's green channel grows to the right
        flips.append(flipped)
        assert torch.equal(_red_ids(s["image"]), s["labels"])  # image and labels flipped together
        nx = s["normals"][0]
        assert torch.allclose(nx, torch.full_like(nx, -0.6 if flipped else 0.6), atol=0.01)
        d = s["depth"][0, 8]
        assert (d[0] > d[-1]) == flipped  # depth grows to the right in the file
        lab = s["labels"]
        edge_cols = (lab[:, 1:] != lab[:, :-1])[0].nonzero().flatten()
        assert s["edges"][0, 0, edge_cols + (0 if flipped else 1)].all()  # edges follow the label boundaries
    assert any(flips) and not all(flips)
    no_flip = build_dataset(DataConfig(root=str(folder_ds), val_fraction=0.0, flip=False), "train", fields=ALL,
                            image_size=16, train=True)
    assert all(no_flip[1]["normals"][0].mean() > 0 for _ in range(6))


def test_val_is_deterministic(folder_ds):
    ds = build_dataset(DataConfig(root=str(folder_ds), val_fraction=0.0), "train", fields=ALL, image_size=16,
                       train=False)
    a, b = ds[2], ds[2]
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_edges_survive_downsampling():
    e = torch.zeros(1, 64, 64)
    e[0, :, 37] = 1.0  # a one-pixel line
    small = resize_field("edges", e, 16)
    assert small[0, :, 9].all() and small.sum() == 16
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    lab[0, :, 40:] = 7
    assert set(resize_field("labels", lab, 16).unique().tolist()) == {0, 7}  # nearest: no blended ids


def test_derived_normals_and_edges(folder_ds):
    """A data set without normals/ and edges/ folders gets them derived (and cached)."""
    import shutil

    shutil.rmtree(folder_ds / "normals")
    shutil.rmtree(folder_ds / "edges")
    ds = build_dataset(DataConfig(root=str(folder_ds), val_fraction=0.0, flip=False), "train",
                       fields=("normals", "edges"), image_size=16, train=False)
    s = ds[0]
    ok = s["normals_valid"][0]
    assert ok.float().mean() > 0.5
    assert (s["normals"][0][ok] > 0.3).all() and (s["normals"][2][ok] > 0.2).all()  # depth grows to the right
    assert s["edges"].sum() > 0


def test_image_is_bicubic_antialiased(tmp_path):
    root = tmp_path / "checker"
    (root / "images").mkdir(parents=True)
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(root / "images" / "a.png")
    s = build_dataset(DataConfig(root=str(root), val_fraction=0.0), "train", fields=(), image_size=8,
                      train=False)[0]
    assert s["image"].std() < 0.05  # a 1-px checkerboard averages to grey instead of aliasing


@pytest.mark.parametrize("bad", [{"image_size": None}, {"image_sizes": (8, 16, 32)}])
def test_bad_sizes(folder_ds, bad):
    with pytest.raises(ValueError):
        build_dataset(DataConfig(root=str(folder_ds)), "train", **bad)
