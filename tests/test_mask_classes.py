"""The mask task's classes: from the data set (toy world, ADE20K 150, COCO-Stuff 182) or a palette given
in config; one-hot or the official RGB colour coding; label PNGs or colour PNGs in the palette."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import config_from_json, config_to_json, resolve_config
from piti_core.errors import ConfigError
from piti_plugins.mask import MaskOptions, MaskTask

SECTIONS = {"mask": MaskOptions}
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]  # black is a class here, not "ignore"


def _cfg(*overrides):
    return resolve_config(preset="tiny", overrides=list(overrides), extra_sections=SECTIONS)


def _colour_map(path, palette, ids):
    Image.fromarray(np.asarray(palette, np.uint8)[ids]).save(path)
    return path


def _ids():
    ids = np.zeros((16, 16), np.int64)
    ids[:, 4:8], ids[:, 8:12], ids[:, 12:] = 1, 2, 3
    return ids


@pytest.mark.parametrize("form", ["file", "dataset.json", "inline"])
def test_palette_given_in_config(form, tmp_path):
    if form == "file":
        (tmp_path / "palette.json").write_text(json.dumps(PALETTE))
        value = str(tmp_path / "palette.json")
    elif form == "dataset.json":  # a data set's own file works too: its classes name the colours
        (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["bg", "red", "green", "blue"],
                                                           "palette": PALETTE}))
        value = str(tmp_path / "dataset.json")
    else:
        value = json.dumps(PALETTE)
    cfg = _cfg(f"mask.palette={value}")
    task = MaskTask()
    spec = task.condition_spec(cfg)
    assert spec.channels == spec.num_classes == 4 and spec.palette == tuple(tuple(c) for c in PALETTE)
    if form == "dataset.json":
        assert spec.class_names == ("bg", "red", "green", "blue")
    cond = task.preprocess(_colour_map(tmp_path / "c.png", PALETTE, _ids()), cfg)
    assert cond.shape == (1, 4, 64, 64)
    got = cond[0].argmax(0)
    assert cond[0].sum(0).eq(1).all()  # every pixel one class: black is class 0, not ignored
    assert got[:, :16].eq(0).all() and got[:, 16:32].eq(1).all() and got[:, 48:].eq(3).all()
    back = config_from_json(config_to_json(cfg), SECTIONS)  # the run's config.json keeps the option
    assert back.task_options("mask").palette == cfg.task_options("mask").palette


def test_palette_in_config_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="mask"):
        _cfg("mask.palette=rainbow")  # neither dataset/coco, a .json file nor a list
    task = MaskTask()
    with pytest.raises(ConfigError, match="missing.json: cannot be read"):
        task.condition_spec(_cfg(f"mask.palette={tmp_path / 'missing.json'}"))
    with pytest.raises(ConfigError, match=r"colour \[255, 0, 0\] is listed twice"):
        task.condition_spec(_cfg("mask.palette=[[0, 0, 0], [255, 0, 0], [255, 0, 0]]"))
    with pytest.raises(ConfigError, match="r, g, b"):
        task.condition_spec(_cfg("mask.palette=[[0, 0, 300]]"))
    with pytest.raises(ConfigError, match="4 colours but mask.num_classes is 5"):
        task.condition_spec(_cfg(f"mask.palette={json.dumps(PALETTE)}", "mask.num_classes=5"))


def test_colour_outside_a_config_palette_says_where_the_palette_comes_from(tmp_path):
    from piti_core.errors import DataError

    path = _colour_map(tmp_path / "c.png", PALETTE + [[9, 9, 9]], np.array([[0, 4]]))
    with pytest.raises(DataError, match=r"c.png: colour \(9, 9, 9\) at 1 pixel\(s\) is not in the mask task's "
                                        r"palette \(4 classes, from mask.palette\)"):
        MaskTask().preprocess(path, _cfg(f"mask.palette={json.dumps(PALETTE)}"))


def test_official_rgb_colour_coding_of_coco():
    """encoding=rgb, COCO colours: label k -> pix2pixHD labelcolormap[k + 1], ignore (255) -> black."""
    cfg = _cfg("mask.encoding=rgb", "mask.palette=coco", "mask.num_classes=182")
    task = MaskTask()
    spec = task.condition_spec(cfg)
    assert spec.channels == 3 and spec.num_classes == 182
    assert spec.palette[:3] == ((128, 0, 0), (0, 128, 0), (128, 128, 0))  # as preprocess_mask.py (spec §3)
    assert (255, 255, 255) not in spec.palette  # so the all-ones null condition (white) is no real mask
    labels = torch.tensor([[0, 1, 255]])
    cond = task.encode({"labels": labels}, cfg)
    expected = torch.tensor([[128, 0, 0], [0, 128, 0], [0, 0, 0]], dtype=torch.float32).T[:, None, :] / 127.5 - 1
    torch.testing.assert_close(cond, expected)


def _ade20k(root):
    base = root / "ADEChallengeData2016"
    for d in ("images/training", "annotations/training"):
        (base / d).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base / "images/training/ADE_train_00000001.jpg")
    Image.fromarray(np.full((8, 8), 150, np.uint8)).save(base / "annotations/training/ADE_train_00000001.png")
    return root


def _coco_stuff(root):
    for d in ("train2017", "stuffthingmaps_trainval2017/train2017"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train2017/000000000001.jpg")
    labels = root / "stuffthingmaps_trainval2017/train2017/000000000001.png"
    Image.fromarray(np.full((8, 8), 181, np.uint8)).save(labels)
    return root


@pytest.mark.parametrize("fmt, make, n, first, raw", [("ade20k", _ade20k, 150, "wall", (1, 150)),
                                                       ("coco-stuff", _coco_stuff, 182, "person", (0, 181))])
def test_classes_of_the_standard_data_sets(fmt, make, n, first, raw, tmp_path):
    root = make(tmp_path / fmt)
    cfg = _cfg(f"data.root={root}", f"data.format={fmt}")
    spec = MaskTask().condition_spec(cfg)
    assert spec.channels == spec.num_classes == n and spec.class_names[0] == first
    assert len(set(spec.palette)) == n  # one colour per class (COCO's colour map where the set has none)
    ids = np.full((8, 8), raw[0], np.uint8)
    ids[:, 4:] = raw[1]
    ids[0, 0] = 0 if fmt == "ade20k" else 255  # unlabelled
    Image.fromarray(ids).save(tmp_path / "ids.png")  # a label PNG as the data set stores them
    cond = MaskTask().preprocess(tmp_path / "ids.png", cfg)[0]
    assert cond.shape == (n, 64, 64) and cond[0].sum() == 64 * 32 - 64 and cond[n - 1].sum() == 64 * 32
    assert cond[:, :8, :8].sum() == 0  # unlabelled: no class (ignore)


@pytest.mark.parametrize("fmt, make, raw", [("ade20k", _ade20k, (1, 150)), ("coco-stuff", _coco_stuff, (0, 181))])
def test_a_run_records_the_data_set_classes_and_samples_without_it(fmt, make, raw, tmp_path):
    """run_config writes classes, colours and the label LUT into config.json: the data set can go."""
    import shutil

    root = make(tmp_path / fmt)
    cfg = _cfg(f"data.root={root}", f"data.format={fmt}")
    task = MaskTask()
    spec = task.condition_spec(cfg)
    ids = np.full((8, 8), raw[0], np.uint8)
    ids[:, 4:] = raw[1]
    Image.fromarray(ids).save(tmp_path / "ids.png")
    want = task.preprocess(tmp_path / "ids.png", cfg)

    frozen = task.run_config(cfg)
    assert task.run_config(frozen) is frozen  # idempotent: a resumed run keeps what it recorded
    saved = config_from_json(config_to_json(frozen), SECTIONS)  # what sample/eval read from the run
    shutil.rmtree(root)
    from piti_plugins.mask import task as mask_module

    mask_module.dataset_classes.cache_clear()
    mask_module._dataset_meta.cache_clear()  # nothing may come from the (removed) data set
    again = task.condition_spec(saved)
    assert (again.class_names, again.palette, again.channels) == (spec.class_names, spec.palette, spec.channels)
    assert torch.equal(task.preprocess(tmp_path / "ids.png", saved), want)  # the data set's own label ids


def test_toy_world_and_given_palettes_are_left_as_they_are():
    task = MaskTask()
    toy = _cfg()
    assert task.run_config(toy) is toy
    given = _cfg("data.root=/somewhere", f"mask.palette={json.dumps(PALETTE)}")
    assert task.run_config(given) is given


def test_a_recorded_palette_with_a_bad_label_lut_is_a_config_error():
    bad = _cfg("mask.palette=" + json.dumps({"palette": PALETTE, "label_lut": [0, 1]}))
    with pytest.raises(ConfigError, match="label_lut"):
        MaskTask().condition_spec(bad)
