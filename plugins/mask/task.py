"""Semantic masks: class-id maps encoded one-hot (default) or with the official RGB colour coding."""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
from attrs import field, frozen

from piti_core.errors import ConfigError
from piti_core.tasks import ConditionSpec, Task

def labelcolormap(n: int) -> list[tuple[int, int, int]]:
    """pix2pixHD's colour map (used by the official COCO-Stuff masks with colour = cmap[label + 1])."""
    cmap = []
    for i in range(n):
        r = g = b = 0
        cid = i
        for j in range(7):
            r |= ((cid >> 0) & 1) << (7 - j)
            g |= ((cid >> 1) & 1) << (7 - j)
            b |= ((cid >> 2) & 1) << (7 - j)
            cid >>= 3
        cmap.append((r, g, b))
    return cmap


@frozen
class MaskOptions:
    encoding: str = field(default="onehot", validator=attrs.validators.in_(("onehot", "rgb")))
    num_classes: int = field(default=0, validator=attrs.validators.ge(0))  # 0: from the data set
    palette: str = field(default="dataset", validator=attrs.validators.in_(("dataset", "coco")))
    ignore_index: int = 255


@functools.lru_cache(maxsize=16)
def dataset_classes(root: str, fmt: str) -> tuple[tuple[str, ...], tuple | None]:
    """Class names and palette of a data set (the toy world when ``root`` is empty).

    Cached: ``condition_spec`` runs for every sample the loader encodes, and must not list or read
    the data set each time.
    """
    if not root:
        from piti_core.data.toyworld import CLASSES, PALETTE

        return tuple(CLASSES), tuple(tuple(c) for c in PALETTE)
    from piti_core.data.formats import discover

    meta = discover(Path(root), fmt).meta
    names = tuple(meta.classes) or tuple(f"class{i}" for i in range(meta.num_classes or 0))
    return names, meta.palette


class MaskTask(Task):
    name = "mask"
    description = "semantic label map -> image (one-hot or official RGB colour coding)"
    sources = ("labels",)
    config_class = MaskOptions

    def classes(self, cfg) -> tuple[list[str], list[tuple[int, int, int]]]:
        opts = self.options(cfg)
        names, palette = (None, None) if opts.num_classes else dataset_classes(cfg.data.root, cfg.data.format)
        n = opts.num_classes or (len(names) if names else 0)
        if not n:
            raise ConfigError(
                f"cannot tell the number of classes of {cfg.data.root}: add a dataset.json with "
                "\"classes\" or pass --set mask.num_classes=N"
            )
        names = list(names) if names and len(names) == n else [f"class{i}" for i in range(n)]
        if opts.palette == "coco" or not palette or len(palette) < n:
            palette = labelcolormap(n + 1)[1:]
        return names, [tuple(int(v) for v in c) for c in palette[:n]]

    def condition_spec(self, cfg) -> ConditionSpec:
        opts = self.options(cfg)
        names, palette = self.classes(cfg)
        onehot = opts.encoding == "onehot"
        return ConditionSpec(
            channels=len(names) if onehot else 3,
            value_range=(0.0, 1.0) if onehot else (-1.0, 1.0),
            num_classes=len(names), class_names=tuple(names), palette=tuple(palette),
            ignore_index=opts.ignore_index,
        )

    def encode(self, sample, cfg):
        import torch

        labels = sample["labels"].long()
        spec = self.condition_spec(cfg)
        valid = (labels >= 0) & (labels < spec.num_classes)
        outside = ~valid & (labels != spec.ignore_index)
        if outside.any():
            from piti_core.errors import DataError

            raise DataError(f"{sample.get('stem', 'a sample')}: label id {int(labels[outside].max())} is outside the "
                            f"task's {spec.num_classes} classes; set mask.num_classes or fix the data set")
        ids = labels.where(valid, torch.zeros_like(labels))
        if self.options(cfg).encoding == "onehot":
            out = torch.nn.functional.one_hot(ids, spec.num_classes).permute(2, 0, 1).float()
            return out * valid.unsqueeze(0)
        colours = torch.tensor(spec.palette, dtype=torch.float32) / 127.5 - 1.0
        out = colours[ids].permute(2, 0, 1)
        return out.where(valid.unsqueeze(0), torch.full_like(out, -1.0))  # ignore -> black

    def preprocess(self, source, cfg):
        """A label PNG of class ids, or an RGB colour map in the task's palette (black = ignore)."""
        import numpy as np
        import torch

        from piti_core.data.readers import map_colours, read_labels
        from piti_core.data.records import DatasetMeta
        from piti_plugins.common import fit_condition, is_pil

        spec = self.condition_spec(cfg)
        meta = DatasetMeta(name="the task's classes", num_classes=spec.num_classes, palette=spec.palette,
                           ignore_index=spec.ignore_index, ignore_color=(0, 0, 0))
        if is_pil(source):
            arr = np.asarray(source)
            ids = map_colours(Path("<image>"), arr[..., :3], meta) if arr.ndim == 3 else arr.astype(np.int64)
        else:
            ids = read_labels(Path(source), meta)
        labels = fit_condition(torch.from_numpy(ids)[None], "labels", cfg)[0]
        return self.encode({"labels": labels}, cfg).unsqueeze(0)

    def visualize(self, cond, cfg):
        import torch

        spec = self.condition_spec(cfg)
        if self.options(cfg).encoding == "rgb":
            return ((cond + 1) / 2).clamp(0, 1)
        colours = torch.tensor(spec.palette, dtype=torch.float32) / 255.0
        rgb = colours[cond.argmax(0)].permute(2, 0, 1)
        return rgb * (cond.sum(0, keepdim=True) > 0)
