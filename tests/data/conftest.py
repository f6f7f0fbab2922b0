"""Fixtures of the data-layer tests: tiny data sets written into tmp dirs, PITI_HOME kept in tmp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piti_core.data.preprocess import encode_normals_rgb


@pytest.fixture(autouse=True)
def _piti_home(tmp_path_factory, monkeypatch):
    """Caches and the default toy world go to a tmp PITI_HOME, never ~/.cache."""
    home = tmp_path_factory.mktemp("piti_home")
    monkeypatch.setenv("PITI_HOME", str(home))
    return home


def stripes(h: int, w: int, num_classes: int, offset: int = 0) -> np.ndarray:
    """Vertical stripes of class ids: column x has class (x // 3 + offset) % num_classes."""
    return np.broadcast_to(((np.arange(w) // 3 + offset) % num_classes)[None, :], (h, w)).astype(np.uint8)


def write_folder(root: Path, n: int = 6, size: tuple[int, int] = (24, 16), *, num_classes: int = 4,
                 kinds=("labels", "edges", "depth", "normals"), captions: bool = True, meta: dict | None = None,
                 image_ext: str = ".png") -> Path:
    """A paired-folder data set; the image's red channel encodes the label (id * 60), green the column."""
    w, h = size
    root.mkdir(parents=True, exist_ok=True)
    for k in ("images",) + tuple(kinds):
        (root / k).mkdir(exist_ok=True)
    for i in range(n):
        stem = f"s{i:03d}"
        lab = stripes(h, w, num_classes, i)
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = lab * 60
        img[..., 1] = (np.arange(w) * 255 // max(w - 1, 1))[None, :]
        img[..., 2] = 128
        Image.fromarray(img).save(root / "images" / f"{stem}{image_ext}", quality=95)
        if "labels" in kinds:
            Image.fromarray(lab, "L").save(root / "labels" / f"{stem}.png")
        if "edges" in kinds:
            Image.fromarray(((np.diff(lab.astype(int), axis=1, prepend=lab[:, :1]) != 0) * 255).astype(np.uint8),
                            "L").save(root / "edges" / f"{stem}.png")
        if "depth" in kinds:
            d = (1000 + 100 * np.arange(w)[None, :] + np.zeros((h, 1))).astype(np.uint16)  # mm, grows to the right
            d[0, 0] = 0  # one invalid pixel
            Image.fromarray(d).save(root / "depth" / f"{stem}.png")
        if "normals" in kinds:
            nrm = np.zeros((h, w, 3), np.float32)
            nrm[...] = np.array([0.6, 0.0, 0.8], np.float32)  # facing right-ish
            Image.fromarray(encode_normals_rgb(nrm)).save(root / "normals" / f"{stem}.png")
    if captions:
        (root / "captions.jsonl").write_text(
            "".join(json.dumps({"stem": f"s{i:03d}", "caption": f"picture {i}"}) + "\n" for i in range(n)))
    info = {"name": "tiny", "classes": [f"c{j}" for j in range(num_classes)], "ignore_index": 255,
            "depth": {"encoding": "png16", "scale": 0.001, "units": "m", "invalid": 0}}
    info.update(meta or {})
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def write_ade20k(root: Path, n_train: int = 3, n_val: int = 2, size=(20, 14)) -> Path:
    base = root / "ADEChallengeData2016"
    w, h = size
    for sub, n in (("training", n_train), ("validation", n_val)):
        (base / "images" / sub).mkdir(parents=True)
        (base / "annotations" / sub).mkdir(parents=True)
        for i in range(n):
            stem = f"ADE_{sub[:5]}_{i + 1:08d}"
            Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(base / "images" / sub / f"{stem}.jpg")
            raw = np.zeros((h, w), np.uint8)  # 0 = unlabelled
            raw[:, w // 2:] = 1  # wall
            raw[0, :] = 150  # flag
            Image.fromarray(raw, "L").save(base / "annotations" / sub / f"{stem}.png")
    return root


def write_coco_stuff(root: Path, n_train: int = 3, n_val: int = 2, size=(20, 14)) -> Path:
    w, h = size
    for sub, n in (("train2017", n_train), ("val2017", n_val)):
        (root / sub).mkdir(parents=True)
        (root / "stuffthingmaps_trainval2017" / sub).mkdir(parents=True)
        for i in range(n):
            stem = f"{i + 1 if sub == 'train2017' else 1000 + i:012d}"
            Image.fromarray(np.full((h, w), 100, np.uint8), "L").save(root / sub / f"{stem}.jpg")  # grayscale photo
            lab = np.full((h, w), 255, np.uint8)
            lab[:, : w // 2] = 0  # person
            lab[-1, :] = 181  # wood
            Image.fromarray(lab, "L").save(root / "stuffthingmaps_trainval2017" / sub / f"{stem}.png")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and mtime: compare before/after to prove no writes."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    out["."] = (-1, Path(root).stat().st_mtime_ns)
    return out


@pytest.fixture
def folder_ds(tmp_path):
    return write_folder(tmp_path / "ds")
