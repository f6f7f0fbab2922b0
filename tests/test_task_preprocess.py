"""Built-in tasks read a user's condition file through the data layer (same checks, same resizing)."""

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import resolve_config
from piti_core.errors import DataError
from piti_core.plugins import PluginHost

HOST = PluginHost()
HOST.load_entry_points()
CFG = resolve_config(preset="tiny", extra_sections=HOST.task_sections())  # toy world classes, cond 64


def test_mask_from_ids_and_from_colours(tmp_path):
    from piti_core.data.toyworld import PALETTE

    ids = np.zeros((40, 60), np.uint8)
    ids[:, 30:] = 7
    Image.fromarray(ids).save(tmp_path / "ids.png")
    colour = np.asarray(PALETTE, np.uint8)[ids]
    Image.fromarray(colour).save(tmp_path / "colour.png")
    task = HOST.task("mask")
    a, b = task.preprocess(tmp_path / "ids.png", CFG), task.preprocess(tmp_path / "colour.png", CFG)
    assert a.shape == (1, 12, 64, 64) and torch.equal(a, b)
    assert a[0, 7].sum() > 0 and a[0, 0].sum() > 0  # keep-aspect centre crop keeps both halves


def test_mask_refuses_ids_outside_the_classes_naming_the_file(tmp_path):
    Image.fromarray(np.full((8, 8), 40, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match="bad.png.*class id 40 is outside the 12 classes"):
        HOST.task("mask").preprocess(tmp_path / "bad.png", CFG)


def test_depth_png16_and_npy_agree(tmp_path):
    depth = np.linspace(1.0, 9.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray((depth * 1000).astype(np.uint16)).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", depth)
    task = HOST.task("depth")
    a, b = task.preprocess(tmp_path / "d.png", CFG), task.preprocess(tmp_path / "d.npy", CFG)
    assert a.shape == (1, 1, 64, 64)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    with pytest.raises(DataError, match="missing.png"):
        task.preprocess(tmp_path / "missing.png", CFG)


def test_normals_are_unit_vectors(tmp_path):
    n = np.zeros((32, 32, 3), np.float32)
    n[..., 2] = 1.0
    Image.fromarray(((n + 1) / 2 * 255).round().astype(np.uint8)).save(tmp_path / "n.png")
    cond = HOST.task("normal").preprocess(tmp_path / "n.png", CFG)
    assert cond.shape == (1, 3, 64, 64)
    torch.testing.assert_close(cond.norm(dim=1), torch.ones(1, 64, 64), atol=1e-3, rtol=0)


def test_sketch_on_a_transparent_canvas_is_strokes_on_white(tmp_path):
    """Drawing apps export black strokes on a transparent canvas: a file and a PIL image give the strokes."""
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[18:21, 5:55, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "drawing.png")
    task = HOST.task("sketch")
    opaque = np.full((40, 60), 255, np.uint8)
    opaque[18:21, 5:55] = 0
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    want = task.preprocess(tmp_path / "opaque.png", CFG)
    assert (want <= -0.99).any()
    torch.testing.assert_close(task.preprocess(tmp_path / "drawing.png", CFG), want)
    torch.testing.assert_close(task.preprocess(Image.fromarray(rgba, "RGBA"), CFG), want)


def test_mask_refuses_transparent_pixels_and_keeps_an_opaque_alpha(tmp_path):
    from piti_core.data.toyworld import PALETTE

    ids = np.zeros((40, 60), np.uint8)
    ids[:, 30:] = 7
    rgba = np.concatenate([np.asarray(PALETTE, np.uint8)[ids], np.full((40, 60, 1), 255, np.uint8)], axis=2)
    task = HOST.task("mask")
    Image.fromarray(ids).save(tmp_path / "ids.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    want = task.preprocess(tmp_path / "ids.png", CFG)
    torch.testing.assert_close(task.preprocess(tmp_path / "opaque.png", CFG), want)
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "holes.png")
    with pytest.raises(DataError, match="holes.png: has 25 transparent pixel"):
        task.preprocess(tmp_path / "holes.png", CFG)
    with pytest.raises(DataError, match="has 25 transparent pixel"):
        task.preprocess(Image.fromarray(rgba, "RGBA"), CFG)
