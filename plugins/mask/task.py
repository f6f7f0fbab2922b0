"""Semantic masks: class-id maps encoded one-hot (default) or with the official RGB colour coding."""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
from attrs import field, frozen

from piti_core.contract import LABELS, ConditionSpec, ConfigError, Task

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


def _palette_choice(inst, attribute, value):
    if value in ("dataset", "coco") or value.lstrip()[:1] in ("[", "{") or value.lower().endswith(".json"):
        return
    raise ValueError(f"palette must be 'dataset', 'coco', a JSON file of colours or a list of [r, g, b], "
                     f"got {value!r}")


@frozen
class MaskOptions:
    encoding: str = field(default="onehot", validator=attrs.validators.in_(("onehot", "rgb")))
    num_classes: int = field(default=0, validator=attrs.validators.ge(0))  # 0: from the data set / palette
    # "dataset" (its dataset.json palette, else COCO's), "coco" (pix2pixHD labelcolormap, the official COCO
    # colours), a JSON file (a list of [r, g, b], or an object with "palette" and "classes" like dataset.json),
    # or the list itself (--set 'mask.palette=[[0, 0, 0], [255, 0, 0]]'; kept in the run's config.json).
    # A run records a data set's classes here as such an object, with "label_lut" (MaskTask.run_config).
    palette: str = field(default="dataset", validator=_palette_choice)
    ignore_index: int = 255


def _config_palette_key(value: str) -> tuple:
    """Cache key of a palette option: the text, plus the file's size and mtime when it names a file."""
    path = Path(value)
    if value.lstrip()[:1] in ("[", "{") or not path.is_file():
        return (value,)
    st = path.stat()
    return (value, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_config_palette(key: tuple):
    """(class names or None, colours, label LUT or None) of a palette given in config; ConfigError naming
    the key or file."""
    import json

    value = key[0]
    inline = value.lstrip()[:1] in ("[", "{")
    where = "mask.palette" if inline else f"mask.palette file {value}"
    if inline:
        text = value
    else:
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc}); give an existing JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); give a list of [r, g, b] colours") from None
    names = lut = None
    if isinstance(data, dict):
        names, lut = data.get("classes"), data.get("label_lut")
        data = data.get("palette")
        if lut is not None and not (isinstance(lut, list) and len(lut) == 256 and all(isinstance(v, int) for v in lut)):
            raise ConfigError(f"{where}: \"label_lut\" must list 256 integer class ids (one per raw label value)")
    ok = isinstance(data, list) and data and all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in data)
    if not ok:
        raise ConfigError(f"{where}: must be a non-empty list of [r, g, b] triples of integers 0-255 (or an object "
                          "with such a \"palette\" and optional \"classes\")")
    colours = tuple(tuple(c) for c in data)
    if len(set(colours)) != len(colours):
        dup = next(c for c in colours if colours.count(c) > 1)
        raise ConfigError(f"{where}: colour {list(dup)} is listed twice; each class needs its own colour")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != len(colours):
            raise ConfigError(f"{where}: \"classes\" must list one name per colour ({len(colours)})")
        names = tuple(names)
    return names, colours, tuple(lut) if lut is not None else None


@functools.lru_cache(maxsize=16)
def dataset_classes(root: str, fmt: str) -> tuple[tuple[str, ...], tuple | None]:
    """Class names and palette of a data set (the toy world when ``root`` is empty).

    Cached: ``condition_spec`` runs for every sample the loader encodes, and must not list or read
    the data set each time.
    """
    if not root:
        from piti_core.contract import TOYWORLD_CLASSES, TOYWORLD_PALETTE

        return tuple(TOYWORLD_CLASSES), tuple(tuple(c) for c in TOYWORLD_PALETTE)
    meta = _dataset_meta(root, fmt)
    names = tuple(meta.classes) or tuple(f"class{i}" for i in range(meta.num_classes or 0))
    return names, meta.palette


@functools.lru_cache(maxsize=16)
def _dataset_meta(root: str, fmt: str):
    from piti_core.contract import dataset_meta

    return dataset_meta(Path(root), fmt)


class MaskTask(Task):
    name = "mask"
    description = "semantic label map -> image (one-hot or official RGB colour coding)"
    sources = ("labels",)
    fields = (LABELS,)
    config_class = MaskOptions

    def classes(self, cfg) -> tuple[list[str], list[tuple[int, int, int]]]:
        """Class names and colours: from ``mask.palette`` when it lists colours, else the data set's
        (``mask.num_classes`` overrides the count), coloured with COCO's map where the data set has none."""
        opts = self.options(cfg)
        if opts.palette not in ("dataset", "coco"):
            names, palette, _ = _read_config_palette(_config_palette_key(opts.palette))
            n = opts.num_classes or len(palette)
            if n > len(palette):
                raise ConfigError(f"mask.palette has {len(palette)} colours but mask.num_classes is {n}; "
                                  "give one colour per class")
        else:
            names, palette = (None, None) if opts.num_classes else dataset_classes(cfg.data.root, cfg.data.format)
            n = opts.num_classes or (len(names) if names else 0)
        if not n:
            raise ConfigError(
                f"cannot tell the number of classes of {cfg.data.root}: add a dataset.json with "
                "\"classes\" or pass --set mask.num_classes=N"
            )
        names = list(names[:n]) if names and len(names) >= n else [f"class{i}" for i in range(n)]
        if opts.palette == "coco" or not palette or len(palette) < n:
            palette = labelcolormap(n + 1)[1:]
        return names, [tuple(int(v) for v in c) for c in palette[:n]]

    def label_lut(self, cfg):
        """How a label PNG's raw values map to class ids (ADE20K: 0 = other, k = class k - 1), or None:
        the data set's own when its classes are used, the one a run recorded in ``mask.palette``."""
        opts = self.options(cfg)
        if opts.palette not in ("dataset", "coco"):
            return _read_config_palette(_config_palette_key(opts.palette))[2]
        if cfg.data.root and not opts.num_classes:
            return _dataset_meta(cfg.data.root, cfg.data.format).label_lut
        return None

    def run_config(self, cfg):
        """Record a data set's classes in the run: ``mask.palette`` becomes the JSON object of its class
        names, colours and label mapping, ``mask.num_classes`` their count, so sampling and evaluation
        never need the data set (the toy world's classes are piti's own and stay "dataset")."""
        import json

        import attrs

        opts = self.options(cfg)
        if not cfg.data.root or opts.palette not in ("dataset", "coco"):
            return cfg
        names, palette = self.classes(cfg)
        lut = self.label_lut(cfg)
        record = {"classes": list(names), "palette": [list(c) for c in palette]}
        if lut is not None:
            record["label_lut"] = [int(v) for v in lut]
        frozen = attrs.evolve(opts, palette=json.dumps(record), num_classes=len(names))
        return attrs.evolve(cfg, tasks={**cfg.tasks, self.name: frozen})

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

    def input_suffixes(self, cfg):
        """Label maps in a lossless format (a JPEG's blurred edges hold colours of no class)."""
        return LABELS.suffixes

    def input_kind(self, cfg):
        return "labels"

    def encode(self, sample, cfg):
        import torch

        labels = sample["labels"].long()
        spec = self.condition_spec(cfg)
        valid = (labels >= 0) & (labels < spec.num_classes)
        outside = ~valid & (labels != spec.ignore_index)
        if outside.any():
            from piti_core.contract import DataError

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
        """A label PNG of class ids (a data set's: in its own id convention), or an RGB colour map in the
        task's palette (black = ignore unless a class is black)."""
        import numpy as np
        import torch

        from piti_core.contract import DatasetMeta, fit_condition, is_pil, map_colours, opaque_labels, read_labels

        spec = self.condition_spec(cfg)
        opts = self.options(cfg)
        black = (0, 0, 0) if (0, 0, 0) not in spec.palette else None  # ignore, unless a class is black
        lut = self.label_lut(cfg)  # label PNGs in the data set's own ids
        meta = DatasetMeta(name="the task's classes", num_classes=spec.num_classes, palette=spec.palette,
                           ignore_index=spec.ignore_index, ignore_color=black, label_lut=lut)
        colours = {"dataset": f"colours of {cfg.data.root or 'the toy world'}", "coco": "COCO colours"}
        colours = colours.get(opts.palette, "from mask.palette")
        wording = dict(
            not_in_palette=f"is not in the mask task's palette ({spec.num_classes} classes, {colours}); paint with "
                           f"its colours{' (black = ignore)' if black else ''}, or give class ids as a one-channel PNG",
            outside_classes="fix the label map, or use a run trained with more classes (mask.num_classes)")
        if is_pil(source):  # transparency as for a file: an opaque alpha is dropped, a transparent pixel refused
            arr = opaque_labels(Path("<image>"), np.asarray(source), source.mode)
            ids = (map_colours(Path("<image>"), arr[..., :3], meta, not_in_palette=wording["not_in_palette"])
                   if arr.ndim == 3 else arr.astype(np.int64))
        else:
            ids = read_labels(Path(source), meta, **wording)
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

    def labels_of(self, cond, cfg):
        """Conditions (B, C, S, S) -> class ids (B, S, S), ignore_index where the condition marks none."""
        import torch

        spec = self.condition_spec(cfg)
        if self.options(cfg).encoding == "onehot":
            ids = cond.argmax(1)
            return ids.where(cond.sum(1) > 0.5, torch.full_like(ids, spec.ignore_index))
        colours = torch.tensor(spec.palette, dtype=torch.float32, device=cond.device) / 127.5 - 1.0
        dist = (cond.float().unsqueeze(1) - colours[None, :, :, None, None]).abs().sum(2)  # (B, K, S, S)
        ids = dist.argmin(1)
        return ids.where((cond > -0.999).any(1), torch.full_like(ids, spec.ignore_index))

    alignment_directions = {"miou": "higher", "pixel_acc": "higher"}

    def alignment(self, samples, batch, cfg):
        """``miou`` and ``pixel_acc`` of the toy-world oracle's label map of the samples against the
        conditions' labels (``batch["labels"]``, else decoded from ``batch["cond"]``).

        Only on the toy world with its own classes: other data sets have no oracle here, so ``{}``.
        A missing or damaged oracle raises CheckpointError (see docs/oracle.md).
        """
        from piti_core.contract import TOYWORLD_CLASSES as CLASSES
        from piti_core.contract import is_toyworld_data, oracle_alignment

        spec = self.condition_spec(cfg)
        if not is_toyworld_data(cfg) or tuple(spec.class_names or ()) != tuple(CLASSES):
            return {}
        labels = batch["labels"] if "labels" in batch else self.labels_of(batch["cond"], cfg)
        return oracle_alignment(samples, labels=labels)
