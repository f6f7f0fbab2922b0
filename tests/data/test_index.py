"""Layouts, format detection, ignore handling, deterministic splits and subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli
from piti_core.config import DataConfig
from piti_core.data.dataset import build_dataset
from piti_core.data.formats import detect_format
from piti_core.data.index import build_index, hash_unit, subset
from piti_core.errors import DataError

from .conftest import snapshot, write_ade20k, write_coco_stuff, write_folder


def test_detect_formats(tmp_path):
    assert detect_format(write_folder(tmp_path / "f", n=2)) == "folder"
    assert detect_format(write_ade20k(tmp_path / "a")) == "ade20k"
    assert detect_format(write_ade20k(tmp_path / "a2") / "ADEChallengeData2016") == "ade20k"
    assert detect_format(write_coco_stuff(tmp_path / "c")) == "coco-stuff"
    with pytest.raises(DataError, match="no such data-set folder"):
        detect_format(tmp_path / "missing")


def test_ade20k_native_splits_and_ignore_shift(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    before = snapshot(root)
    index = build_index(root)
    assert index.format == "ade20k" and index.meta.num_classes == 150
    assert index.counts() == {"train": 3, "val": 2}
    assert [s.split for s in index.samples] == ["train"] * 3 + ["val"] * 2
    ds = build_dataset(DataConfig(root=str(root), resize="squash"), "val", fields=("labels",), image_size=20,
                       cond_size=20, train=False)
    labels = ds[0]["labels"]
    assert set(labels.unique().tolist()) == {0, 149, 255}  # raw 1 -> 0 (wall), raw 150 -> 149 (flag), raw 0 -> 255
    assert (labels[1:, :8] == 255).all() and (labels[1:, 12:] == 0).all() and (labels[0] == 149).all()
    assert ds.meta.class_name(0) == "wall" and ds.meta.class_name(149) == "flag"
    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 0 and "2 of 150 found (ignore 255): 0 wall, 149 flag" in result.stdout
    # a raw value above 150 is not ADE20K
    bad = root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    raw = np.array(Image.open(bad))
    raw[1, 1] = 151
    Image.fromarray(raw, "L").save(bad)
    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 1 and f"{bad}: raw label value 151 is outside 0-150 of ADE20K" in result.stdout
    assert {k for k in snapshot(root)} == {k for k in before}


def test_coco_stuff_layout(tmp_path):
    root = write_coco_stuff(tmp_path / "coco")
    index = build_index(root, "coco-stuff")
    assert index.counts() == {"train": 3, "val": 2} and index.meta.num_classes == 182
    ds = build_dataset(DataConfig(root=str(root), resize="squash"), "train", fields=("labels",), image_size=16,
                       cond_size=20, train=False)
    s = ds[0]
    assert s["image"].shape == (3, 16, 16)  # grayscale JPEG -> RGB
    assert set(s["labels"].unique().tolist()) == {0, 181, 255}
    result = CliRunner().invoke(cli, ["data", "check", str(root), "--json"])
    report = json.loads(result.stdout)
    assert report["format"] == "coco-stuff" and report["splits"] == {"train": 3, "val": 2}
    assert report["classes_found"]["181"]["name"] == "wood"
    lab = root / "stuffthingmaps_trainval2017" / "val2017" / "000000001000.png"
    arr = np.array(Image.open(lab))
    arr[0, 0] = 182
    Image.fromarray(arr, "L").save(lab)
    with pytest.raises(DataError, match=f"{lab}: class id 182 is outside the 182 classes"):
        ds = build_dataset(DataConfig(root=str(root)), "val", fields=("labels",), image_size=8)
        [ds[i] for i in range(len(ds))]


def test_hash_split_is_deterministic_and_stable(tmp_path):
    root = write_folder(tmp_path / "ds", n=40, kinds=("labels",), captions=False)
    a = build_index(root, val_fraction=0.25)
    b = build_index(root, val_fraction=0.25)
    assert [(s.stem, s.split) for s in a.samples] == [(s.stem, s.split) for s in b.samples]
    val = {s.stem for s in a.split("val")}
    assert 3 <= len(val) <= 18 and val == {s.stem for s in a.samples if hash_unit(f"split:{s.stem}") < 0.25}
    # removing files never moves the others between splits
    for stem in ("s000", "s001", "s002"):
        (root / "images" / f"{stem}.png").unlink()
        (root / "labels" / f"{stem}.png").unlink()
    c = build_index(root, val_fraction=0.25)
    assert {s.stem for s in c.split("val")} == val - {"s000", "s001", "s002"}


def test_dataset_json_splits(tmp_path):
    root = write_folder(tmp_path / "ds", n=5, kinds=("labels",), meta={"splits": {"val": ["s001", "s003.png"]}})
    index = build_index(root, val_fraction=0.9)
    assert [s.stem for s in index.split("val")] == ["s001", "s003"] and len(index.split("train")) == 3
    root2 = write_folder(tmp_path / "ds2", n=5, kinds=("labels",),
                         meta={"splits": {"train": ["s000"], "test": ["s004"], "val": ["nope"]}})
    index = build_index(root2)
    assert index.counts() == {"train": 1, "test": 1, "unused": 3}
    assert any("splits.val lists 'nope'" in str(p) for p in index.problems)
    with pytest.raises(DataError, match="split 'val' is empty"):
        build_dataset(DataConfig(root=str(root2)), "val", image_size=8)


def test_limit_and_subset_seed(tmp_path):
    root = write_folder(tmp_path / "ds", n=30, kinds=("labels",), captions=False)
    index = build_index(root, val_fraction=0.0)
    s1 = [s.stem for s in index.select("train", 5, 0)]
    assert s1 == [s.stem for s in index.select("train", 5, 0)] and s1 == sorted(s1) and len(s1) == 5
    assert s1 != [s.stem for s in index.select("train", 5, 1)]
    assert set(s1) <= {s.stem for s in index.select("train", 10, 0)}  # nested
    assert len(subset(list(index.samples), 0)) == 30
    ds = build_dataset(DataConfig(root=str(root), limit=4, subset_seed=3, val_fraction=0.0), "train",
                       fields=("labels",), image_size=8)
    assert [s.stem for s in ds.samples] == [s.stem for s in index.select("train", 4, 3)]


def test_missing_condition_kind_is_explained(tmp_path):
    root = write_folder(tmp_path / "ds", n=3, kinds=("labels",))
    with pytest.raises(DataError, match="has no depth .*it holds: labels"):
        build_dataset(DataConfig(root=str(root)), "all", fields=("depth",), image_size=8)
    with pytest.raises(DataError, match="derived from depth"):
        build_dataset(DataConfig(root=str(root)), "all", fields=("normals",), image_size=8)
