"""Semantic masks: class-id maps encoded one-hot (default) or with the official RGB colour coding."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from attrs import field, frozen

from piti_core.errors import ConfigError, DataError
from piti_core.tasks import ConditionSpec, Task

KNOWN_FORMAT_CLASSES = {"ade20k": 150, "coco-stuff": 182}


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


def dataset_classes(cfg) -> tuple[list[str] | None, list | None]:
    """Class names and palette of the configured data set (the toy world when none is given)."""
    data = cfg.data
    if not data.root or data.format == "toyworld" and not Path(data.root, "dataset.json").is_file():
        from piti_core.data.toyworld import CLASSES, PALETTE

        return list(CLASSES), [tuple(c) for c in PALETTE]
    meta = Path(data.root) / "dataset.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{meta}: invalid JSON ({exc})") from None
        palette = info.get("palette")
        return info.get("classes"), [tuple(c) for c in palette] if palette else None
    if data.format in KNOWN_FORMAT_CLASSES:
        return [f"class{i}" for i in range(KNOWN_FORMAT_CLASSES[data.format])], None
    return None, None


class MaskTask(Task):
    name = "mask"
    description = "semantic label map -> image (one-hot or official RGB colour coding)"
    sources = ("labels",)
    config_class = MaskOptions

    def classes(self, cfg) -> tuple[list[str], list[tuple[int, int, int]]]:
        opts = self.options(cfg)
        names, palette = (None, None) if opts.num_classes else dataset_classes(cfg)
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
        import numpy as np
        import torch

        from piti_plugins.common import fit_square, open_image

        img, name = open_image(source)
        spec = self.condition_spec(cfg)
        if img.mode in ("L", "P", "I", "I;16"):
            ids = np.asarray(img).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            ids = self._ids_from_colours(np.asarray(img.convert("RGB")), spec, name)
        else:
            raise DataError(f"{name}: label maps must be a grey/palette PNG of class ids or an RGB colour map, got mode {img.mode}")
        bad = (ids >= spec.num_classes) & (ids != spec.ignore_index) | (ids < 0)
        if bad.any():
            raise DataError(
                f"{name}: label id {int(ids[bad].max())} is outside 0..{spec.num_classes - 1} "
                f"(ignore id {spec.ignore_index}); is this the right data set / --set mask.num_classes?"
            )
        from PIL import Image

        lab = fit_square(Image.fromarray(ids.astype(np.uint8)), cfg.encoder.cond_size, "nearest", cfg.data.resize)
        return self.encode({"labels": torch.from_numpy(np.asarray(lab).astype(np.int64))}, cfg).unsqueeze(0)

    @staticmethod
    def _ids_from_colours(rgb, spec, name):
        import numpy as np

        codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
        table = {r << 16 | g << 8 | b: i for i, (r, g, b) in enumerate(spec.palette)}
        ids = np.full(codes.shape, spec.ignore_index, dtype=np.int64)
        unknown = np.ones(codes.shape, dtype=bool)
        for code, idx in table.items():
            hit = codes == code
            ids[hit], unknown[hit] = idx, False
        black = codes == 0
        unknown &= ~black
        if unknown.any():
            c = rgb[unknown][0]
            raise DataError(
                f"{name}: colour ({c[0]},{c[1]},{c[2]}) at {int(unknown.sum())} pixels is not in the task palette; "
                "give a PNG of class ids instead, or the data set's dataset.json palette"
            )
        return ids

    def visualize(self, cond, cfg):
        import torch

        spec = self.condition_spec(cfg)
        if self.options(cfg).encoding == "rgb":
            return ((cond + 1) / 2).clamp(0, 1)
        colours = torch.tensor(spec.palette, dtype=torch.float32) / 255.0
        rgb = colours[cond.argmax(0)].permute(2, 0, 1)
        return rgb * (cond.sum(0, keepdim=True) > 0)
