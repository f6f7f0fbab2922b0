"""Condition encodings: depth (16-bit PNG, .npy, float TIFF, units, NaN as invalid), normals, labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from piti_core.data.formats import read_dataset_json
from piti_core.data.preprocess import encode_normals_rgb
from piti_core.data.readers import read_depth, read_edges, read_labels, read_normals
from piti_core.data.records import DatasetMeta, DepthSpec
from piti_core.errors import DataError


def test_depth_encodings(tmp_path):
    raw = np.array([[0, 1500], [2000, 65535]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "d.png")
    d, v = read_depth(tmp_path / "d.png", DatasetMeta())  # integer file: millimetres by default
    assert np.allclose(d, [[0, 1.5], [2.0, 65.535]]) and v.tolist() == [[False, True], [True, True]]
    d, _ = read_depth(tmp_path / "d.png", DatasetMeta(depth=DepthSpec(scale=0.1, units="cm")))
    assert np.allclose(d[0, 1], 1.5)
    f = np.array([[0.0, 1.25], [np.nan, 3.0]], np.float32)
    np.save(tmp_path / "d.npy", f)
    with pytest.raises(DataError, match="d.npy: holds 1 NaN/inf"):
        read_depth(tmp_path / "d.npy", DatasetMeta())
    d, v = read_depth(tmp_path / "d.npy", DatasetMeta(depth=DepthSpec(invalid="nan")))
    assert v.tolist() == [[True, True], [False, True]] and np.allclose(d, [[0, 1.25], [0, 3.0]])
    Image.fromarray(np.array([[1.0, 2.5], [0.0, 4.0]], np.float32), "F").save(tmp_path / "d.tif")
    d, v = read_depth(tmp_path / "d.tif", DatasetMeta())  # float file: metres
    assert np.allclose(d, [[1.0, 2.5], [0, 4.0]]) and not v[1, 0]
    np.save(tmp_path / "neg.npy", np.array([[1.0, -2.0]], np.float32))
    with pytest.raises(DataError, match="negative depth"):
        read_depth(tmp_path / "neg.npy", DatasetMeta())
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(DataError, match=r"bad.npy: has shape \(2, 2, 3\)"):
        read_depth(tmp_path / "bad.npy", DatasetMeta())


def test_normals_encodings(tmp_path):
    n = np.zeros((2, 3, 3), np.float32)
    n[..., 2] = 1
    n[0, 0] = (0.6, -0.8, 0)
    rgb = encode_normals_rgb(n)
    rgb[1, 2] = 0  # black = invalid
    Image.fromarray(rgb).save(tmp_path / "n.png")
    got, valid = read_normals(tmp_path / "n.png", DatasetMeta())
    assert np.allclose(got[0, 0], (0.6, -0.8, 0), atol=0.01) and not valid[1, 2] and valid.sum() == 5
    assert np.allclose(np.linalg.norm(got[valid], axis=-1), 1, atol=1e-5) and (got[1, 2] == 0).all()
    np.save(tmp_path / "n.npy", n)
    got, _ = read_normals(tmp_path / "n.npy", DatasetMeta(normals_convention="opencv"))
    assert np.allclose(got[0, 0], (0.6, 0.8, 0)) and np.allclose(got[1, 1], (0, 0, -1))


def test_label_modes(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bin.png")  # mode "1": two classes
    assert read_labels(tmp_path / "bin.png", DatasetMeta(num_classes=2)).tolist() == [[1, 0]]
    p = Image.fromarray(np.array([[0, 3]], np.uint8), "P")
    p.putpalette([0, 0, 0, 9, 9, 9, 1, 1, 1, 200, 0, 0])
    p.save(tmp_path / "p.png")
    assert read_labels(tmp_path / "p.png", DatasetMeta(num_classes=4)).tolist() == [[0, 3]]  # palette indices
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    assert read_labels(tmp_path / "wide.png", DatasetMeta(num_classes=400)).tolist() == [[0, 300]]
    Image.fromarray(np.array([[0, 100, 200]], np.uint8), "L").save(tmp_path / "e.png")
    assert read_edges(tmp_path / "e.png").tolist() == [[False, False, True]]


def test_dataset_json_validation(tmp_path):
    def meta(text):
        (tmp_path / "dataset.json").write_text(text)
        return read_dataset_json(tmp_path)

    m = meta('{"classes": ["a", "b"], "camera": {"fov_deg": 50}, "depth": {"units": "mm"}, "generator": "x"}')
    assert m.num_classes == 2 and m.fov_deg == 50 and m.depth.units == "mm" and m.extra == {"generator": "x"}
    for text, key in [('{"classes": ["a"], "num_classes": 3}', "'classes'"),
                      ('{"palette": [[1, 2]]}', "'palette'"),
                      ('{"depth": {"encoding": "exr"}}', "'depth.encoding'"),
                      ('{"depth": {"invalid": "none"}}', "'depth.invalid'"),
                      ('{"normals": {"convention": "dx"}}', "'normals.convention'"),
                      ('{"splits": {"val": "a"}}', "'splits'"),
                      ('[1, 2]', "JSON object")]:
        with pytest.raises(DataError, match=key):
            meta(text)


# ------------------------------------------------------------------------------------ transparency, size bound
def test_transparent_images_are_composited_over_white(tmp_path):
    from piti_core.data.readers import read_image

    rgba = np.zeros((4, 6, 4), np.uint8)  # transparent black, one opaque black and one half-red pixel
    rgba[1, 2, 3] = 255
    rgba[2, 3] = (255, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 2].tolist() == [0, 0, 0]
    assert rgb[2, 3, 0] == 255 and 120 < rgb[2, 3, 1] < 135  # half red on white: pink
    la = np.zeros((4, 6, 2), np.uint8)
    la[1, 2, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    grey = read_image(tmp_path / "la.png")
    assert grey[1, 2].tolist() == [0, 0, 0] and (grey.sum() == 255 * 3 * (4 * 6 - 1))
    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)  # index 1 (black) is transparent
    assert read_image(tmp_path / "p.png").tolist() == [[[0, 0, 0], [255] * 3], [[255] * 3, [255] * 3]]
    Image.fromarray(np.eye(3, dtype=bool)).save(tmp_path / "bits.png")  # mode "1": a 1-bit drawing
    assert read_image(tmp_path / "bits.png")[0, 0].tolist() == [255, 255, 255]


def test_label_maps_never_get_a_class_from_transparency(tmp_path):
    meta = DatasetMeta(num_classes=3, palette=[(0, 0, 0), (255, 0, 0), (0, 0, 255)])
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 1, :3] = (255, 0, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert read_labels(tmp_path / "opaque.png", meta).tolist() == [[0, 1, 0], [0, 0, 0]]
    rgba[1, 2, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "holes.png")
    with pytest.raises(DataError, match="holes.png: has 1 transparent pixel"):
        read_labels(tmp_path / "holes.png", meta)
    pal = Image.fromarray(np.array([[0, 2], [1, 2]], np.uint8), "P")
    pal.putpalette([0] * 768)
    pal.save(tmp_path / "pal.png", transparency=2)
    assert read_labels(tmp_path / "pal.png", meta).tolist() == [[0, 2], [1, 2]]  # the index is the class


def test_pixel_bound_from_the_header(tmp_path, monkeypatch):
    from piti_core.data import readers

    Image.new("L", (30, 20)).save(tmp_path / "big.png")
    np.save(tmp_path / "big.npy", np.ones((20, 30), np.float32))
    monkeypatch.setattr(readers, "MAX_PIXELS", 500)
    with pytest.raises(DataError, match=r"big.png: is 30x20 = 600 pixels, over piti's limit of 500"):
        readers.read_image(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.npy: is 30x20 = 600 pixels"):
        read_depth(tmp_path / "big.npy", DatasetMeta())
    Image.fromarray(np.ones((20, 30), np.float32), "F").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif: is 30x20 = 600 pixels"):  # no fallback decoder tries it
        read_depth(tmp_path / "big.tif", DatasetMeta())
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "f64.tif", np.ones((20, 30), np.float64))  # read by tifffile, not PIL
    with pytest.raises(DataError, match=r"f64.tif: holds 600 values \(shape \(20, 30\)\), over piti's limit"):
        read_depth(tmp_path / "f64.tif", DatasetMeta())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own bomb error (> 2x its limit) is ours too
    with pytest.raises(DataError, match="big.png: has more than 500 pixels"):
        readers.read_edges(tmp_path / "big.png")
