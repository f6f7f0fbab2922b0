"""How well generated images follow their sketches: edge F1 and Chamfer distance.

The sample's edges are Canny edges of the generated image (the same detector that derives sketches
from photos); the input's edges are the pixels the condition marks as edges (distance 0, value -1),
max-pooled down to the sample's resolution. An edge pixel counts as matched when the other map has
an edge within ``tolerance`` pixels (at the sample's resolution).
"""

from __future__ import annotations

import numpy as np


def condition_edges(cond, size: int):
    """Condition (B, 1, S, S) in the distance encoding -> binary edges (B, size, size) numpy."""
    import torch.nn.functional as F

    edges = (cond[:, :1] <= -0.999).float()
    if edges.shape[-1] != size:
        edges = F.adaptive_max_pool2d(edges, size)
    return edges[:, 0].cpu().numpy() > 0.5


def image_edges(images) -> np.ndarray:
    """Images (B, 3, H, W) in [-1, 1] -> Canny edges (B, H, W) bool."""
    from piti_core.contract import canny_edges

    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return np.stack([canny_edges(a) > 0 for a in arr])


def edge_alignment(images, cond, tolerance: float = 1.5) -> dict[str, float]:
    """Mean edge F1 (higher is better) and symmetric Chamfer distance in pixels (lower is better)."""
    from scipy.ndimage import distance_transform_edt

    pred = image_edges(images)
    true = condition_edges(cond, images.shape[-1])
    f1s, chamfers = [], []
    diag = float(np.hypot(*pred.shape[1:]))
    for p, t in zip(pred, true):
        if not p.any() and not t.any():
            f1s.append(1.0)
            chamfers.append(0.0)
            continue
        if not p.any() or not t.any():
            f1s.append(0.0)
            chamfers.append(diag)
            continue
        dist_to_t = distance_transform_edt(~t)
        dist_to_p = distance_transform_edt(~p)
        precision = float((dist_to_t[p] <= tolerance).mean())
        recall = float((dist_to_p[t] <= tolerance).mean())
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
        chamfers.append(0.5 * (float(dist_to_t[p].mean()) + float(dist_to_p[t].mean())))
    return {"edge_f1": float(np.mean(f1s)), "chamfer": float(np.mean(chamfers))}
