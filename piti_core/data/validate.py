"""Check every file of a data set without training (``piti data check``).

:func:`check_dataset` lists the data set like the loader does, then decodes every image and every
condition file with the same readers, and collects every problem instead of stopping at the first:
the loader and the check can never disagree about what is bad. It also gathers a summary: counts per
split, image sizes, classes found, depth range, conditions present. Given a task's fields
(``piti data check DIR --task T``) it checks those fields only, each with its own reader, and names a
field the data set lacks when nothing derives it. Nothing is written anywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from piti_core.data import readers
from piti_core.data.fields import known_fields, resolve_fields
from piti_core.data.index import build_index
from piti_core.data.records import Problem
from piti_core.errors import DataError


@dataclass
class CheckReport:
    root: Path
    format: str
    name: str
    counts: dict[str, int]
    kinds: tuple[str, ...]
    samples: int = 0
    good: int = 0
    captions: int = 0
    sizes: Counter = field(default_factory=Counter)  # (w, h) -> images
    classes: Counter = field(default_factory=Counter)  # class id -> pixels
    class_names: tuple[str, ...] = ()
    num_classes: int | None = None
    ignore_index: int = 255
    depth_range: tuple[float, float] | None = None
    problems: list[Problem] = field(default_factory=list)
    task: str | None = None
    derived: tuple[str, ...] = ()  # fields the task needs that the loader derives (no files)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_pairs(self) -> int:
        return self.samples - self.good

    def to_dict(self) -> dict:
        return {
            "root": str(self.root), "format": self.format, "name": self.name, "ok": self.ok,
            "samples": self.samples, "good": self.good, "splits": self.counts, "conditions": list(self.kinds),
            "captions": self.captions,
            "sizes": [{"width": w, "height": h, "count": c} for (w, h), c in self.sizes.most_common()],
            "num_classes": self.num_classes, "ignore_index": self.ignore_index,
            "classes_found": {str(k): {"name": self._name(k), "pixels": v} for k, v in sorted(self.classes.items())},
            "depth_range_m": list(self.depth_range) if self.depth_range else None,
            "problems": [p.to_dict() for p in self.problems],
            "task": self.task, "derived": list(self.derived),
        }

    def _name(self, i: int) -> str:
        return self.class_names[i] if 0 <= i < len(self.class_names) else ""

    def summary_lines(self) -> list[str]:
        splits = ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "-"
        sizes = ", ".join(f"{w}x{h} ({c})" for (w, h), c in self.sizes.most_common(3))
        if len(self.sizes) > 3:
            sizes += f", ... ({len(self.sizes)} sizes)"
        lines = [
            f"data set    {self.name} ({self.format})",
            f"root        {self.root}",
            f"samples     {self.samples} ({splits})",
            f"conditions  {', '.join(self.kinds) or 'none (images only)'}; captions {self.captions}",
            f"image sizes {sizes or '-'}",
        ]
        if self.task is not None:
            derived = f"; derived: {', '.join(self.derived)}" if self.derived else ""
            lines.insert(3, f"task        {self.task} (fields checked: {', '.join(self.kinds) or 'image only'}{derived})")
        if "labels" in self.kinds:
            of = f" of {self.num_classes}" if self.num_classes else ""
            shown = ", ".join(f"{k} {self._name(k)}".strip() for k in sorted(self.classes)[:12])
            more = ", ..." if len(self.classes) > 12 else ""
            lines.append(f"classes     {len(self.classes)}{of} found (ignore {self.ignore_index}): {shown}{more}")
        if self.depth_range:
            lines.append(f"depth       {self.depth_range[0]:.3g} - {self.depth_range[1]:.3g} m")
        bad = f" ({self.bad_pairs} bad pair(s))" if self.problems else ""
        lines.append(f"problems    {len(self.problems)}{bad}")
        return lines


def check_dataset(root: str | Path, format: str = "auto", *, val_fraction: float = 0.05,
                  callback: Callable[[dict], None] | None = None, fields=None, task: str | None = None) -> CheckReport:
    """Decode every file of the data set at ``root``; return the summary and every problem found.

    ``fields`` (Field objects or names; e.g. a task's :meth:`~piti_core.tasks.Task.data_fields`):
    check these only, and report each one the data set lacks unless the loader derives it; ``task``
    names the task they come from in messages. Default: every known field the data set holds.
    Raises DataError only when the data set cannot be listed at all (no such folder, unknown layout,
    bad dataset.json). ``callback`` gets ``{"event": "check", "done", "total"}`` after each sample.
    """
    wanted = None if fields is None else resolve_fields(f for f in fields if getattr(f, "name", f) != "image")
    index = build_index(root, format, val_fraction=val_fraction, fields=wanted or ())
    meta = index.meta
    problems: list[Problem] = []
    derived: list[str] = []
    kinds = index.kinds
    if wanted is not None:
        kinds = tuple(f.name for f in wanted if f.name in index.kinds)
        for f in wanted:
            if f.name in index.kinds:
                continue
            if f.derive is not None:
                derived.append(f.name)
                continue
            needs = f"which task '{task}' needs" if task else "which is needed"
            what = f": {f.description}" if f.description else ""
            problems.append(Problem(index.root / f.folder, f"no {f.folder}/ folder, {needs} (field {f.name}{what}); "
                                    f"add {f.folder}/<stem>{f.suffixes[0]} for every image"))
    report = CheckReport(index.root, index.format, meta.name, index.counts(), kinds,
                         samples=len(index.samples), captions=sum(bool(s.caption) for s in index.samples),
                         class_names=meta.classes, num_classes=meta.num_classes, ignore_index=meta.ignore_index,
                         task=task, derived=tuple(derived))
    by_name = {f.name: f for f in wanted or ()}
    problems += _relevant(index, wanted) + index.missing(index.samples, kinds)
    if not index.samples:
        where = {"ade20k": "images/training", "coco-stuff": "train2017"}.get(index.format, "images")
        problems.append(Problem(index.root / where, "the data set is empty: no images found; put the images there "
                                                    "or check the path and --format"))
    bad = {p.stem for p in problems if p.stem is not None}
    lo, hi = np.inf, -np.inf
    for done, sample in enumerate(index.samples, 1):
        present = [by_name.get(k, k) for k in kinds if k in sample.conditions]
        try:
            arrays = readers.read_sample(sample, present, meta)
        except DataError as exc:
            problems.append(readers.problem_of(exc, sample.image, sample.stem))
            bad.add(sample.stem)
        else:
            h, w = arrays["image"].shape[:2]
            report.sizes[(w, h)] += 1
            if "labels" in arrays:
                ids = arrays["labels"]
                counts = np.bincount(ids[ids != meta.ignore_index].ravel())
                report.classes.update({int(i): int(c) for i, c in enumerate(counts) if c})
            if "depth" in arrays and arrays["depth_valid"].any():
                d = arrays["depth"][arrays["depth_valid"]]
                lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
        if callback is not None:
            callback({"event": "check", "done": done, "total": len(index.samples)})
    if np.isfinite(lo):
        report.depth_range = (lo, hi)
    report.good = sum(s.stem not in bad for s in index.samples)
    report.problems = problems
    return report


def _relevant(index, wanted) -> list[Problem]:
    """The problems seen listing the data set, less those in the folders of fields not ``wanted``."""
    if wanted is None:
        return list(index.problems)
    names = {f.name for f in wanted}
    other = {Path(index.root) / f.folder for name, f in known_fields(wanted).items() if name not in names}
    return [p for p in index.problems if Path(p.file).parent not in other]
