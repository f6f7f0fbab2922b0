"""The sketch alignment metric ranks an image drawn from its sketch above unrelated images."""

import torch

from piti_plugins.sketch.metrics import edge_alignment
from piti_plugins.sketch.task import edge_distance


def _square(size, a, b):
    img = -torch.ones(3, size, size)
    img[:, a:b, a:b] = 1.0
    edges = torch.zeros(1, size, size)
    edges[0, a, a:b] = edges[0, b - 1, a:b] = edges[0, a:b, a] = edges[0, a:b, b - 1] = 1
    return img, edge_distance(edges, size)


def test_matching_image_scores_higher_than_mismatched():
    img1, cond1 = _square(32, 6, 20)
    img2, cond2 = _square(32, 14, 30)
    good = edge_alignment(torch.stack([img1, img2]), torch.stack([cond1, cond2]))
    bad = edge_alignment(torch.stack([img2, img1]), torch.stack([cond1, cond2]))
    assert good["edge_f1"] > 0.8 > bad["edge_f1"]
    assert good["chamfer"] < 1.0 < bad["chamfer"]


def test_blank_image_against_a_sketch_scores_zero():
    img, cond = _square(32, 6, 20)
    res = edge_alignment(-torch.ones(1, 3, 32, 32), cond[None])
    assert res["edge_f1"] == 0.0
