"""Depth conditions from the file types users have: 16-bit PNG, .npy, float TIFF; a real stereo disparity."""

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import resolve_config
from piti_core.plugins import PluginHost

HOST = PluginHost()
HOST.load_entry_points()
CFG = resolve_config(preset="tiny", extra_sections=HOST.task_sections())  # 64×64 conditions


def _scene(h=48, w=80):
    """Metres: a floor from 9 m (top) to 1.5 m (bottom), a box at 1.2 m, no depth in the top rows."""
    depth = np.linspace(9.0, 1.5, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    depth[16:36, 30:50] = 1.2
    depth[:4] = 0.0
    return depth


def test_units_do_not_matter_and_every_format_agrees(tmp_path):
    """Float TIFF in metres, 16-bit PNG in millimetres, .npy in centimetres: the same condition."""
    depth = _scene()
    Image.fromarray(depth, mode="F").save(tmp_path / "m.tif")
    Image.fromarray((depth * 1000).round().astype(np.uint16)).save(tmp_path / "mm.png")
    np.save(tmp_path / "cm.npy", depth * 100)
    np.save(tmp_path / "m.npy", depth)
    assert Image.open(tmp_path / "m.tif").mode == "F"
    task = HOST.task("depth")
    tif, png, cm, m = (task.preprocess(tmp_path / n, CFG) for n in ("m.tif", "mm.png", "cm.npy", "m.npy"))
    assert tif.shape == (1, 1, 64, 64) and torch.isfinite(tif).all()
    assert torch.equal(tif, m)  # float TIFF is read exactly
    torch.testing.assert_close(cm, m, atol=1e-5, rtol=0)  # per-image log normalisation: any unit
    torch.testing.assert_close(png, m, atol=2e-3, rtol=0)  # millimetre rounding
    assert float(m.min()) == -1.0 and float(m.max()) == 1.0
    # keep-aspect centre crop of 80 -> 48 columns, then 64 rows: the no-depth top rows stay -1
    assert (m[0, 0, :4] == -1).all()
    box, floor_near, floor_far = m[0, 0, 30, 32], m[0, 0, 60, 5], m[0, 0, 8, 5]
    assert box < floor_near < floor_far  # nearer -> lower


def test_depth_normal_from_one_depth_file(tmp_path):
    """depth-normal given one depth file derives its normals (as the data set's normals-from-depth)."""
    from piti_core.data.preprocess import focal_from_fov

    f, cy = focal_from_fov(40), 19.5  # the derived normals assume a 60-degree field of view
    depth = np.full((40, 40), 8.0, np.float32)  # a wall facing the camera, 8 m away
    v = np.arange(24, 40, dtype=np.float32)[:, None]
    depth[24:] = 1.0 * f / (v - cy)  # a floor 1 m below the camera: z = h f / (v - cy)
    np.save(tmp_path / "d.npy", depth)
    cond = HOST.task("depth-normal").preprocess(tmp_path / "d.npy", CFG)
    assert cond.shape == (1, 6, 64, 64) and torch.isfinite(cond).all()
    torch.testing.assert_close(cond[0, 3:], HOST.task("depth").preprocess(tmp_path / "d.npy", CFG)[0].expand(3, -1, -1))
    normals = cond[0, :3]  # rows 0-37 come from the wall, 40-63 from the floor (40 -> 64 nearest)
    up, toward = torch.tensor([0.0, 1.0, 0.0])[:, None, None], torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    torch.testing.assert_close(normals[:, 2:34], toward.expand(3, 32, 64), atol=1e-5, rtol=0)  # the wall faces +z
    torch.testing.assert_close(normals[:, 42:], up.expand(3, 22, 64), atol=1e-4, rtol=0)  # the floor faces up


@pytest.fixture(scope="module")
def motorcycle():
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the Middlebury pair")
    from piti_core.data.preprocess import depth_from_disparity

    _, _, disp = skdata.stereo_motorcycle()
    # calibration of the downsampled pair (skimage.data.stereo_motorcycle docstring), as motorcycle_depth.py
    depth = depth_from_disparity(disp, focal=994.978, baseline=0.193001, doffs=31.086)
    return disp, np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)


def test_stereo_disparity_as_a_depth_condition(motorcycle, tmp_path):
    """A real disparity map, turned into depth and saved as a float TIFF, keeps its near/far order."""
    from piti_plugins.common import fit_condition

    disp, depth = motorcycle
    Image.fromarray(depth, mode="F").save(tmp_path / "motorcycle.tif")
    cond = HOST.task("depth").preprocess(tmp_path / "motorcycle.tif", CFG)
    assert cond.shape == (1, 1, 64, 64) and torch.isfinite(cond).all()
    assert float(cond.min()) == -1.0 and float(cond.max()) == 1.0
    c = cond[0, 0].numpy()
    d = fit_condition(torch.from_numpy(disp)[None], "depth", CFG)[0].numpy()  # the same crop and resampling
    known = np.isfinite(d)
    assert 0.85 < known.mean() < 1.0 and (c[~known] == -1).all()  # unknown disparity -> no depth -> -1
    order = np.argsort(d[known], kind="stable")
    assert (np.diff(c[known][order]) <= 1e-6).all()  # larger disparity = nearer = lower value, everywhere
    assert np.corrcoef(c[known], d[known])[0, 1] < -0.9
