"""One index per data set: its samples, deterministic train/val splits and subsets.

Splits, in order of precedence:

1. ``dataset.json`` ``"splits"``: ``{"train": [stems], "val": [stems], ...}``. Without a ``"train"``
   list, every stem not listed elsewhere is train; with one, unlisted stems are unused.
2. The native splits of ADE20K (training / validation) and COCO-Stuff (train2017 / val2017).
3. Otherwise a stable hash of the stem: ``sha1("split:" + stem)`` as a number in [0, 1) below
   ``val_fraction`` means val. Adding or removing files never moves another file between splits.

Subsets (``DataConfig.limit`` / ``subset_seed``) keep the ``limit`` stems of the split with the
smallest ``sha1(f"subset:{seed}:{stem}")``, in sorted order: deterministic, independent of the
machine and of the other files, and nested (a 100-sample subset holds the 50-sample one).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from piti_core.data.formats import discover
from piti_core.data.records import DatasetMeta, Problem, Sample
from piti_core.errors import DataError

SPLITS = ("train", "val", "all")


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (sha1), the same on every machine and Python."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class DatasetIndex:
    """The samples of one data set (sorted by split order then stem) and the problems seen listing it."""

    root: Path
    format: str
    meta: DatasetMeta
    samples: tuple[Sample, ...]
    kinds: tuple[str, ...]  # condition kinds present in the data set
    problems: tuple[Problem, ...] = ()
    partner: Callable[[str, Sample], Path] | None = None

    def split_names(self) -> list[str]:
        names = sorted({s.split for s in self.samples if s.split}, key=lambda n: (n != "train", n != "val", n))
        return names

    def counts(self) -> dict[str, int]:
        out = {name: sum(s.split == name for s in self.samples) for name in self.split_names()}
        unused = sum(not s.split for s in self.samples)
        if unused:
            out["unused"] = unused
        return out

    def split(self, name: str) -> list[Sample]:
        if name == "all":
            return list(self.samples)
        return [s for s in self.samples if s.split == name]

    def select(self, split: str, limit: int = 0, subset_seed: int = 0) -> list[Sample]:
        """The samples of ``split`` ("train", "val", "all" or a dataset.json split), subset to ``limit``."""
        if not self.samples:
            raise DataError(f"{self.root}: the data set is empty (no images found); put images in its "
                            "images folder or check the path and --format")
        if split != "all" and split not in self.split_names():
            counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
            raise DataError(f"{self.root}: split '{split}' is empty ({counts}); raise data.val_fraction, list stems "
                            "under \"splits\" in dataset.json, or use another split")
        return subset(self.split(split), limit, subset_seed)

    def missing(self, samples: Iterable[Sample], kinds: Iterable[str]) -> list[Problem]:
        """A problem for every sample lacking one of ``kinds`` (its missing partner file)."""
        out = []
        for s in samples:
            for kind in kinds:
                if kind not in s.conditions:
                    where = self.partner(kind, s) if self.partner else Path(kind) / s.stem
                    out.append(Problem(where, f"missing {kind} file for image {s.image}; add it or remove the image",
                                       s.stem))
        return out

    def with_samples(self, samples: Iterable[Sample]) -> "DatasetIndex":
        return dataclasses.replace(self, samples=tuple(samples))


def subset(samples: list[Sample], limit: int = 0, seed: int = 0) -> list[Sample]:
    """The ``limit`` samples with the smallest seeded hash of their stem, in their original order."""
    if not limit or limit >= len(samples):
        return list(samples)
    keep = set(sorted(range(len(samples)), key=lambda i: hash_unit(f"subset:{seed}:{samples[i].stem}"))[:limit])
    return [s for i, s in enumerate(samples) if i in keep]


def assign_splits(root: Path, samples: list[Sample], meta: DatasetMeta, val_fraction: float
                  ) -> tuple[list[Sample], list[Problem]]:
    """Give every sample without a native split one from dataset.json or from the stem hash."""
    problems: list[Problem] = []
    if meta.splits:
        where: dict[str, str] = {}
        present = {s.stem for s in samples}
        for name, stems in meta.splits.items():
            for stem in stems:
                if stem in where and where[stem] != name:
                    problems.append(Problem(root / "dataset.json", f"stem '{stem}' is listed in splits '{where[stem]}' "
                                                                  f"and '{name}'; list it once", stem))
                where.setdefault(stem, name)
                if stem not in present:
                    problems.append(Problem(root / "dataset.json", f"splits.{name} lists '{stem}' but there is no "
                                                                  "image with that stem; fix the list"))
        default = "" if "train" in meta.splits else "train"
        return [dataclasses.replace(s, split=where.get(s.stem, default)) for s in samples], problems
    out = []
    for s in samples:
        if not s.split:
            s = dataclasses.replace(s, split="val" if hash_unit(f"split:{s.stem}") < val_fraction else "train")
        out.append(s)
    return out, problems


def build_index(root: str | Path, format: str = "auto", *, val_fraction: float = 0.05, fields=()) -> DatasetIndex:
    """List the data set at ``root`` (no decoding) and assign splits. Raises DataError if it is unusable.

    ``fields``: Field objects (or names) to look for besides those the registered tasks declare."""
    layout = discover(Path(root), format, fields)
    samples, problems = assign_splits(layout.root, layout.samples, layout.meta, val_fraction)
    order = {"train": 0, "val": 1}
    samples.sort(key=lambda s: (order.get(s.split, 2), s.split, s.stem))
    return DatasetIndex(layout.root, layout.format, layout.meta, tuple(samples), layout.kinds,
                        tuple(layout.problems + problems), layout.partner)


def index_from_config(data_cfg, root: str | Path | None = None, fields=()) -> DatasetIndex:
    """:func:`build_index` for a :class:`~piti_core.config.DataConfig` (``root`` overrides ``data_cfg.root``)."""
    return build_index(root if root is not None else data_cfg.root, data_cfg.format,
                       val_fraction=data_cfg.val_fraction, fields=fields)
