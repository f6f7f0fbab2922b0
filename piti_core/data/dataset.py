"""The torch Dataset shared by every task: images and their conditions, jointly cropped, resized, flipped.

``build_dataset(cfg.data, "train", fields=("labels",), image_sizes=(64,), cond_size=256)`` yields::

    "image"          float (3, s, s) in [-1, 1] at image_sizes[0]
    "image_hr"       float (3, S, S) in [-1, 1] at image_sizes[1] (only with two sizes: the
                     upsampler's 256 target; "image" is then its 64 low-res input, downsampled from it)
    "labels"         int64 (c, c) class ids, ignore_index (255) where unlabelled
    "edges"          float (1, c, c) in {0, 1}
    "depth"          float (1, c, c) metres, 0 where unknown, + bool "depth_valid" (1, c, c)
    "normals"        float (3, c, c) unit vectors (+x right, +y up, +z to camera), 0 where unknown,
                     + bool "normals_valid" (1, c, c)
    <a task's field> as its :class:`~piti_core.data.fields.Field` declares, (C, c, c)
    "caption" str, "stem" str

with c = cond_size. ``fields`` are Field objects or the names of known fields. A requested field the
data set lacks is derived and cached when its Field names a preprocessor that can make it (edges from
the photo, normals from depth; see :mod:`.cache`).

Bad data: every problem raises a one-line DataError naming the file, unless ``data.skip_bad``: then
the bad pair is left out, listed in ``dataset.skipped`` and announced to ``callback``. Listing and
header checks (missing partner, not an image, wrong channels, size mismatch) happen when the data set
is built; decoding problems (truncated file, class id out of range, NaN depth) when a sample is read,
where a skipped sample is replaced by the next good one (in DataLoader worker processes such skips
stay in the worker's copy). ``validate="full"`` decodes everything up front instead, for an exact
count. Nothing is written into the data-set folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from piti_core.data import readers
from piti_core.data.cache import cached_conditions, cached_preprocessor, get_preprocessor
from piti_core.data.fields import Field, resolve_fields
from piti_core.data.index import DatasetIndex, index_from_config
from piti_core.data.records import DatasetMeta, Problem, Sample
from piti_core.data.transforms import JointAugment, prepare
from piti_core.errors import DataError

ALWAYS = ("image", "caption", "stem")  # in every sample, whatever is requested


class PairedDataset(torch.utils.data.Dataset):
    """Samples of one split of one data set; see the module docstring for the keys."""

    def __init__(self, index: DatasetIndex, samples: Sequence[Sample], *, kinds: Sequence["Field | str"],
                 derived: Mapping[str, Mapping[str, Path]] | None = None, image_sizes: Sequence[int] = (64,),
                 cond_size: int = 64, resize: str = "keep-aspect", train: bool = False, flip: bool = True,
                 transform: Callable[[dict], dict] | None = None, skip_bad: bool = False,
                 skipped: Iterable[Problem] = (), callback: Callable[[dict], None] | None = None,
                 cond_sized: Iterable[str] = ()):
        self.index = index
        self.samples = list(samples)
        self.fields = resolve_fields(k for k in kinds if k != "image")
        self.kinds = tuple(f.name for f in self.fields)
        self.image_cond = "image" in kinds
        self.derived = {k: dict(v) for k, v in (derived or {}).items()}
        self.image_sizes = tuple(int(s) for s in image_sizes)
        self.cond_size = int(cond_size)
        self.resize = resize
        self.train = train
        self.augment = JointAugment() if (train and flip) else None
        self.transform = transform
        self.skip_bad = skip_bad
        self.skipped: list[Problem] = list(skipped)
        self.callback = callback
        # derived conditions made at the condition size (``cond_sized``) are scaled up onto the photo: bring
        # them back with nearest sampling (max-pooling would thicken their lines)
        self.resample = {k: "nearest" for k in cond_sized if k in self.derived}

    @property
    def meta(self) -> DatasetMeta:
        """Classes, palette, ignore index ... of the data set."""
        return self.index.meta

    @property
    def root(self) -> Path:
        return self.index.root

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> dict:
        """The decoded numpy arrays of sample ``i`` at the files' resolution (no crop/resize/flip)."""
        s = self.samples[i]
        derived = {k: self.derived[k][s.stem] for k in self.derived}
        return readers.read_sample(s, self.fields, self.index.meta, derived)

    def _skip(self, i: int, exc: DataError) -> None:
        problem = readers.problem_of(exc, self.samples[i].image, self.samples[i].stem)
        self.skipped.append(problem)
        if self.callback is not None:
            self.callback({"event": "skip", "problem": str(problem), "count": len(self.skipped)})

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.samples)
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                arrays = self.load(j)
                break
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(j, exc)
        else:
            raise DataError(f"{self.root}: every sample of this split is bad ({len(self.skipped)} skipped); "
                            f"run `piti data check {self.root}`")
        out = prepare(arrays, image_sizes=self.image_sizes, cond_size=self.cond_size, resize=self.resize,
                      train=self.train, augment=self.augment, resample=self.resample,
                      fields={f.name: f for f in self.fields}, image_cond=self.image_cond)
        s = self.samples[j]
        out["caption"], out["stem"] = s.caption, s.stem
        return self.transform(out) if self.transform is not None else out


def _decoded(arr):
    """The "preprocessor" of a cached field: its decoded array as it is."""
    return arr


def _sizes(image_size, image_sizes) -> tuple[int, ...]:
    sizes = image_sizes if image_sizes is not None else image_size
    if sizes is None:
        raise ValueError("build_dataset needs image_size (an int) or image_sizes (e.g. (64, 256))")
    sizes = (sizes,) if isinstance(sizes, int) else tuple(int(s) for s in sizes)
    if not 1 <= len(sizes) <= 2 or min(sizes) <= 0:
        raise ValueError(f"image sizes must be one or two positive ints (base, high-res), got {sizes}")
    return sizes


def _bad(problems: list[Problem], root: Path) -> DataError:
    more = f" ({len(problems) - 1} more problem(s): run `piti data check {root}`, or pass --skip-bad)" \
        if len(problems) > 1 else " (or pass --skip-bad to skip such pairs)"
    exc = DataError(f"{problems[0]}{more}")
    exc.file, exc.problem = problems[0].file, problems[0].message
    return exc


def build_dataset(data_cfg, split: str = "train", *, fields: Iterable["Field | str"] = ("labels",),
                  image_size: int | Sequence[int] | None = None, image_sizes: Sequence[int] | None = None,
                  cond_size: int | None = None, train: bool = True, transform: Callable[[dict], dict] | None = None,
                  root: str | Path | None = None, derive: Mapping[str, str] | None = None,
                  validate: str = "header", callback: Callable[[dict], None] | None = None) -> PairedDataset:
    """The data set of ``split`` ("train", "val", "all") described by ``data_cfg`` (a DataConfig).

    ``fields``: the fields to load (Field objects, or names: labels, edges, depth, normals or a field a
    registered task declares; "image"/"caption" are always there, and naming "image" also gives the
    photo at the condition size as "cond_image"). ``image_sizes``: one size, or (base, high-res) to also get "image_hr". ``derive`` maps a
    condition kind to a preprocessor name that computes it even when the data set has files for it
    (default: only missing edges/normals are derived). ``validate``: "header" (default; open every
    file's header now), "full" (decode everything now) or "none". ``root`` overrides ``data_cfg.root``;
    with neither, the built-in toy world is generated (once) at the largest requested size.
    ``callback`` receives ``{"event": "skip" | "preprocess" | "toyworld" | "message", ...}`` dicts.
    """
    sizes = _sizes(image_size, image_sizes)
    cond_size = int(cond_size or sizes[0])
    fields = tuple(fields)
    image_cond = "image" in fields or any(isinstance(f, Field) and f.name == "image" for f in fields)
    wanted = resolve_fields(f for f in fields if f not in ("caption", "stem") and getattr(f, "name", f) != "image")
    kinds = [f.name for f in wanted]
    by_name = {f.name: f for f in wanted}
    if validate not in ("header", "full", "none"):
        raise ValueError(f"validate must be 'header', 'full' or 'none', got {validate!r}")
    root = root if root is not None else data_cfg.root
    if not root:
        from piti_core.data.default import ensure_toyworld

        root = ensure_toyworld(max(*sizes, cond_size), data_cfg.toyworld_samples, data_cfg.toyworld_seed,
                               callback=callback)
    index = index_from_config(data_cfg, root, fields=wanted)
    samples = index.select(split, data_cfg.limit, data_cfg.subset_seed)

    derivers = {}
    for kind in kinds:
        name = (derive or {}).get(kind) or (by_name[kind].derive if kind not in index.kinds else None)
        if name is None and kind not in index.kinds:
            folder = by_name[kind].folder
            raise DataError(f"{index.root}: the data set has no {kind} (no {folder} folder) and nothing derives it; "
                            f"it holds: {', '.join(index.kinds) or 'images only'}")
        if name is not None:
            pre = get_preprocessor(name)
            if pre.source != "image" and pre.source not in index.kinds:
                raise DataError(f"{index.root}: {kind} must be derived from {pre.source} ({pre.name}), but the data "
                                f"set has no {pre.source} folder; add {kind} files")
            derivers[kind] = pre
    file_kinds = [k for k in kinds if k not in derivers] + [p.source for p in derivers.values() if p.source != "image"]
    file_kinds = list(dict.fromkeys(file_kinds))
    file_fields = [by_name.get(k) or k for k in file_kinds]

    # problems found while listing, and missing partners, for the selected samples only
    stems = {s.stem for s in samples}
    problems = [p for p in index.problems if p.stem in stems] + index.missing(samples, file_kinds)
    if validate != "none":
        bad_stems = {p.stem for p in problems}
        for s in samples:
            if s.stem in bad_stems:
                continue
            try:
                if validate == "full":
                    readers.read_sample(s, file_fields, index.meta)
                else:
                    readers.probe_sample(s, file_fields, index.meta)
            except DataError as exc:
                problems.append(readers.problem_of(exc, s.image, s.stem))
    if problems and not data_cfg.skip_bad:
        raise _bad(problems, index.root)
    skipped = list({p.stem: p for p in reversed(problems)}.values())[::-1]  # the first problem of each pair
    samples = [s for s in samples if s.stem not in {p.stem for p in skipped}]
    if callback is not None:
        for n, p in enumerate(skipped, 1):
            callback({"event": "skip", "problem": str(p), "count": n})

    derived, cond_sized = {}, []
    for kind, pre in derivers.items():
        sized = {"short_side": cond_size} if "short_side" in pre.params else {}
        cond_sized += [kind] if sized else []
        res = cached_preprocessor(index.with_samples(samples), pre, callback, skip_bad=data_cfg.skip_bad, **sized)
        derived[kind] = res.paths
        skipped += res.skipped
        samples = [s for s in samples if s.stem in res.paths]
    for f in wanted:  # fields that keep their decoded arrays in the cache (an expensive reader)
        if f.cache is None or f.name in derived:
            continue
        res = cached_conditions(index.with_samples(samples), f"field-{f.name}", _decoded, f.cache, {}, callback,
                                source=f, skip_bad=data_cfg.skip_bad)
        derived[f.name] = res.paths
        skipped += res.skipped
        samples = [s for s in samples if s.stem in res.paths]
    if not samples:
        raise DataError(f"{index.root}: no usable sample left in split '{split}' ({len(skipped)} skipped as bad); "
                        f"run `piti data check {index.root}`")
    return PairedDataset(index, samples, kinds=(*wanted, *(("image",) if image_cond else ())), derived=derived,
                         image_sizes=sizes, cond_size=cond_size, resize=data_cfg.resize, train=train, flip=data_cfg.flip, transform=transform,
                         skip_bad=data_cfg.skip_bad, skipped=skipped, callback=callback, cond_sized=cond_sized)


def require_paired_dataset(task, dataset, purpose: str) -> None:
    """A PluginError naming the task unless ``dataset`` (what ``task.build_dataset`` returned) is a
    :class:`PairedDataset`, which ``purpose`` (few-shot training, evaluation) reads beyond ``__getitem__``."""
    if not isinstance(dataset, PairedDataset):
        from piti_core.errors import PluginError

        raise PluginError(f"task '{task.name}': {purpose} needs the data set of Task.build_dataset (a PairedDataset); "
                          f"build_dataset returned a {type(dataset).__name__}")
