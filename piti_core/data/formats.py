"""On-disk layouts: paired folders (and the toy world), ADE20K, COCO-Stuff; ``dataset.json``.

Each ``discover_*`` function lists files only (no decoding) and returns a :class:`Layout`: the
metadata, one :class:`~piti_core.data.records.Sample` per image with the condition files found for
it, and the problems seen while listing (duplicate stems, lossy label files, condition files without
an image, a bad ``captions.jsonl`` line). Splits are assigned later by :mod:`piti_core.data.index`.

Layouts (see docs/datasets.md for the trees)::

    folder      ROOT/images/<stem>.png|jpg, ROOT/<folder>/<stem>.* for each known field (labels, edges,
                depth, normals, and any a task declares; see piti_core.data.fields), dataset.json
    ade20k      [ROOT/ADEChallengeData2016/]images/{training,validation}/*.jpg,
                annotations/{training,validation}/*.png
    coco-stuff  ROOT/[images/]{train2017,val2017}/*.jpg,
                ROOT/[annotations/]stuffthingmaps_trainval2017/{train2017,val2017}/*.png
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from piti_core.data.classes import ADE20K_CLASSES, COCO_STUFF_CLASSES
from piti_core.data.fields import BUILTIN, IMAGE_SUFFIXES, LOSSY_SUFFIXES, Field, known_fields, resolve_fields
from piti_core.data.records import DatasetMeta, DepthSpec, Problem, Sample
from piti_core.errors import DataError

FORMATS = ("folder", "ade20k", "coco-stuff", "toyworld")
IMAGE_EXTS = IMAGE_SUFFIXES
LOSSY_EXTS = LOSSY_SUFFIXES
ADE_SPLITS = (("training", "train"), ("validation", "val"))
COCO_SPLITS = (("train2017", "train"), ("val2017", "val"))


@dataclass(frozen=True)
class PartnerPath:
    """Where the ``kind`` file of a sample belongs: ``dirs[(split, kind)]`` (or ``dirs[("", kind)]``) /
    ``<stem><ext>``. A plain picklable object, so data sets survive DataLoader worker processes."""

    dirs: dict
    exts: dict

    def __call__(self, kind: str, sample: Sample) -> Path:
        base = self.dirs.get((sample.split, kind)) or self.dirs.get(("", kind)) or Path(kind)
        return Path(base) / f"{sample.stem}{self.exts.get(kind, '.png')}"


@dataclass
class Layout:
    """What listing a data set found. ``partner(kind, sample)`` is where a missing condition belongs."""

    root: Path
    format: str
    meta: DatasetMeta
    samples: list[Sample]
    kinds: tuple[str, ...]
    partner: "PartnerPath"
    problems: list[Problem] = field(default_factory=list)


# ------------------------------------------------------------------------------------ listing


def _list_files(directory: Path, exts: tuple[str, ...], problems: list[Problem], kind: str,
               lossless: bool | None = None) -> dict[str, Path]:
    """stem -> file for the files of ``directory`` with one of ``exts`` (hidden files are skipped);
    ``lossless`` refuses JPEG/WebP files (default: for every kind but images and edges)."""
    if lossless is None:
        lossless = kind not in ("image", "edges")
    found: dict[str, Path] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        ext = path.suffix.lower()
        if lossless and ext in LOSSY_EXTS:
            problems.append(Problem(path, f"{kind} must be stored losslessly (JPEG changes the values); "
                                          "re-save it as PNG", path.stem))
            continue
        if ext not in exts:
            continue
        if path.stem in found:
            problems.append(Problem(path, f"two {kind} files share the stem '{path.stem}' "
                                          f"({found[path.stem].name}, {path.name}); keep one", path.stem))
            continue
        found[path.stem] = path
    return found


def _orphans(conds: dict[str, Path], images: dict[str, Path], kind: str, image_dir: Path) -> list[Problem]:
    return [Problem(p, f"this {kind} file has no image {image_dir / stem}.*; add the image or remove the file")
            for stem, p in conds.items() if stem not in images]


# ------------------------------------------------------------------------------- dataset.json


def _bad(path: Path, key: str, what: str) -> DataError:
    return DataError(f"{path}: key '{key}' {what}; fix dataset.json (see docs/datasets.md)")


def _rgb_list(path: Path, key: str, value) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(value, list) or not all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in value
    ):
        raise _bad(path, key, "must be a list of [r, g, b] triples of integers 0-255")
    return tuple(tuple(c) for c in value)


def read_dataset_json(root: Path, fmt: str = "folder") -> DatasetMeta:
    """Parse ``ROOT/dataset.json`` (all keys optional); without the file, defaults for a folder."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        return DatasetMeta(name=root.name, format=fmt)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix or delete dataset.json") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold a JSON object; fix or delete dataset.json")
    known = {"name", "classes", "num_classes", "palette", "ignore_index", "ignore_color", "depth", "normals",
             "camera", "splits"}
    kw: dict = {"name": str(data.get("name") or root.name), "format": fmt,
                "extra": {k: v for k, v in data.items() if k not in known}}
    if "classes" in data:
        if not isinstance(data["classes"], list) or not all(isinstance(c, str) for c in data["classes"]):
            raise _bad(path, "classes", "must be a list of class names")
        kw["classes"] = tuple(data["classes"])
    if "palette" in data:
        kw["palette"] = _rgb_list(path, "palette", data["palette"])
    if "ignore_color" in data:
        kw["ignore_color"] = _rgb_list(path, "ignore_color", [data["ignore_color"]])[0]
    num = data.get("num_classes")
    if num is not None and (not isinstance(num, int) or num <= 0):
        raise _bad(path, "num_classes", "must be a positive integer")
    for key in ("classes", "palette"):
        if key in kw and num is not None and len(kw[key]) != num:
            raise _bad(path, key, f"has {len(kw[key])} entries but num_classes is {num}")
        num = num if num is not None else (len(kw[key]) if key in kw else None)
    if "classes" in kw and "palette" in kw and len(kw["classes"]) != len(kw["palette"]):
        raise _bad(path, "palette", f"has {len(kw['palette'])} colours for {len(kw['classes'])} classes")
    kw["num_classes"] = num
    ignore = data.get("ignore_index", 255)
    if not isinstance(ignore, int) or not 0 <= ignore <= 65535:
        raise _bad(path, "ignore_index", "must be an integer 0-65535")
    kw["ignore_index"] = ignore
    kw["depth"] = _depth_spec(path, data.get("depth", {}))
    normals = data.get("normals", {})
    if not isinstance(normals, dict):
        raise _bad(path, "normals", "must be an object like {\"encoding\": \"rgb\"}")
    if normals.get("encoding", "rgb") not in ("rgb", "npy"):
        raise _bad(path, "normals.encoding", "must be \"rgb\" or \"npy\"")
    kw["normals_convention"] = normals.get("convention", "opengl")
    if kw["normals_convention"] not in ("opengl", "opencv"):
        raise _bad(path, "normals.convention", "must be \"opengl\" (+y up, +z to camera) or \"opencv\"")
    camera = data.get("camera", {})
    if not isinstance(camera, dict):
        raise _bad(path, "camera", "must be an object like {\"focal\": 500.0}")
    for key in ("focal", "fov_deg"):
        value = camera.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not 0 < value < 1e7):
            raise _bad(path, f"camera.{key}", "must be a positive number")
        kw[key] = None if value is None else float(value)
    if "splits" in data and data["splits"] is not None:
        splits = data["splits"]
        if not isinstance(splits, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in splits.values()
        ):
            raise _bad(path, "splits", "must map split names to lists of stems, e.g. {\"val\": [\"0001\"]}")
        kw["splits"] = {k: tuple(Path(s).stem if Path(s).suffix.lower() in IMAGE_EXTS else s for s in v)
                        for k, v in splits.items()}
    return DatasetMeta(**kw)


def _depth_spec(path: Path, depth) -> DepthSpec:
    if not isinstance(depth, dict):
        raise _bad(path, "depth", "must be an object like {\"encoding\": \"png16\", \"scale\": 0.001}")
    enc = depth.get("encoding")
    if enc not in (None, "png16", "npy", "tiff"):
        raise _bad(path, "depth.encoding", "must be \"png16\", \"npy\" or \"tiff\"")
    scale = depth.get("scale")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
        raise _bad(path, "depth.scale", "must be a positive number (raw value x scale = depth)")
    units = depth.get("units", "m")
    if units not in ("m", "cm", "mm"):
        raise _bad(path, "depth.units", "must be \"m\", \"cm\" or \"mm\"")
    invalid = depth.get("invalid", 0)
    if not (invalid == "nan" or (isinstance(invalid, (int, float)) and math.isfinite(invalid))):
        raise _bad(path, "depth.invalid", "must be a number (raw value of pixels without depth) or \"nan\"")
    return DepthSpec(encoding=enc, scale=None if scale is None else float(scale), units=units,
                     invalid=invalid if invalid == "nan" else float(invalid))


def _read_captions(path: Path, problems: list[Problem]) -> dict[str, str]:
    """stem -> caption from ``captions.jsonl``; each bad line (not UTF-8, not an object with a stem and a
    caption, a stem given twice) is a problem naming ``file:line`` and is left out."""
    captions: dict[str, str] = {}
    if not path.is_file():
        return captions
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_bytes().removeprefix(codecs.BOM_UTF8).splitlines(), 1):
        where = Path(f"{path}:{lineno}")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(where, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                           "save the file as UTF-8"))
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            stem = str(rec.get("stem") or Path(rec["image"]).stem)
            caption = str(rec["caption"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            problems.append(Problem(where, 'expected {"stem": ..., "caption": ...} on each line; fix this line'))
            continue
        if stem in first_line:
            problems.append(Problem(where, f"stem '{stem}' already has a caption on line {first_line[stem]}; "
                                           "keep one line per stem"))
            continue
        first_line[stem] = lineno
        captions[stem] = caption
    return captions


# ------------------------------------------------------------------------------------ layouts


def discover_folder(root: Path, fmt: str = "folder", fields: Iterable[Field | str] = ()) -> Layout:
    """A paired-folder data set: ``images/`` and one folder per field (``fields`` and every field the
    registered tasks declare) that exists."""
    root = Path(root)
    meta = read_dataset_json(root, fmt)
    problems: list[Problem] = []
    images = _list_files(root / "images", IMAGE_EXTS, problems, "image")
    known = known_fields(resolve_fields(fields))
    order = list(BUILTIN)
    known = dict(sorted(known.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    present = {name: f for name, f in known.items() if (root / f.folder).is_dir()}
    kinds = tuple(present)
    conds = {k: _list_files(root / f.folder, f.suffixes, problems, k, f.lossless) for k, f in present.items()}
    captions = _read_captions(root / "captions.jsonl", problems)
    for kind in kinds:
        problems += _orphans(conds[kind], images, kind, root / "images")
    samples = [Sample(stem, path, {k: conds[k][stem] for k in kinds if stem in conds[k]}, "", captions.get(stem, ""))
               for stem, path in images.items()]
    dirs = {("", k): root / f.folder for k, f in known.items()}
    exts = {k: (f.partner_suffix(meta) if f.partner_suffix else f.suffixes[0]) for k, f in known.items()}
    return Layout(root, fmt, meta, samples, kinds, PartnerPath(dirs, exts), problems)


def find_ade20k(root: Path) -> Path | None:
    for base in (root, root / "ADEChallengeData2016"):
        if any((base / "images" / d).is_dir() for d, _ in ADE_SPLITS) and (base / "annotations").is_dir():
            return base
    return None


def _ade_names(base: Path) -> tuple[str, ...]:
    """Class names from objectInfo150.csv (Idx,Ratio,Train,Val,Name) when present and sane."""
    path = next((p for p in (base / "objectInfo150.csv", base.parent / "objectInfo150.csv") if p.is_file()), None)
    if path is None:
        return ADE20K_CLASSES
    try:
        rows = [line.split(",", 4) for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
        names = tuple(r[4].split(";")[0].strip().strip('"') for r in rows)
        return names if len(names) == 150 else ADE20K_CLASSES
    except (OSError, IndexError, UnicodeDecodeError):
        return ADE20K_CLASSES


def discover_ade20k(root: Path) -> Layout:
    root = Path(root)
    base = find_ade20k(root)
    if base is None:
        raise DataError(f"{root}: not an ADE20K tree (expected images/training and annotations/training, "
                        "as in ADEChallengeData2016); pass the folder that holds them")
    lut = [-1] * 256
    lut[0] = 255  # "other" -> ignore
    for k in range(1, 151):
        lut[k] = k - 1
    meta = DatasetMeta(name="ADE20K", format="ade20k", classes=_ade_names(base), num_classes=150,
                       ignore_index=255, label_lut=tuple(lut))
    problems: list[Problem] = []
    samples: list[Sample] = []
    for sub, split in ADE_SPLITS:
        images = _list_files(base / "images" / sub, (".jpg", ".jpeg", ".png"), problems, "image")
        labels = _list_files(base / "annotations" / sub, (".png",), problems, "labels")
        problems += _orphans(labels, images, "labels", base / "images" / sub)
        samples += [Sample(stem, p, {"labels": labels[stem]} if stem in labels else {}, split)
                    for stem, p in images.items()]
    dirs = {(split, "labels"): base / "annotations" / sub for sub, split in ADE_SPLITS}
    return Layout(root, "ade20k", meta, samples, ("labels",), PartnerPath(dirs, {}), problems)


def _coco_dirs(root: Path) -> tuple[Path | None, dict[str, Path]]:
    labels = next((d for d in (root / "stuffthingmaps_trainval2017",
                               root / "annotations" / "stuffthingmaps_trainval2017") if d.is_dir()), None)
    images = {}
    for sub, split in COCO_SPLITS:
        d = next((d for d in (root / sub, root / "images" / sub) if d.is_dir()), None)
        if d is not None:
            images[split] = d
    return labels, images


def find_coco_stuff(root: Path) -> bool:
    labels, images = _coco_dirs(root)
    return labels is not None and bool(images)


def _coco_captions(root: Path, split: str, problems: list[Problem]) -> dict[str, str]:
    path = root / "annotations" / f"captions_{split}2017.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
        out: dict[str, str] = {}
        for ann in data["annotations"]:
            out.setdefault(names[ann["image_id"]], ann["caption"].strip())
        return out
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        problems.append(Problem(path, "not a COCO captions file (images/annotations lists); fix or remove it"))
        return {}


def discover_coco_stuff(root: Path) -> Layout:
    root = Path(root)
    label_dir, image_dirs = _coco_dirs(root)
    if label_dir is None or not image_dirs:
        raise DataError(f"{root}: not a COCO-Stuff tree (expected train2017/ or val2017/ and "
                        "stuffthingmaps_trainval2017/); pass the folder that holds them")
    meta = DatasetMeta(name="COCO-Stuff", format="coco-stuff", classes=COCO_STUFF_CLASSES, num_classes=182,
                       ignore_index=255)
    problems: list[Problem] = []
    samples: list[Sample] = []
    for sub, split in COCO_SPLITS:
        if split not in image_dirs:
            continue
        images = _list_files(image_dirs[split], (".jpg", ".jpeg", ".png"), problems, "image")
        labels = _list_files(label_dir / sub, (".png",), problems, "labels")
        problems += _orphans(labels, images, "labels", image_dirs[split])
        captions = _coco_captions(root, split[:5] if split == "train" else "val", problems)
        samples += [Sample(stem, p, {"labels": labels[stem]} if stem in labels else {}, split, captions.get(stem, ""))
                    for stem, p in images.items()]
    dirs = {(split, "labels"): label_dir / sub for sub, split in COCO_SPLITS}
    return Layout(root, "coco-stuff", meta, samples, ("labels",), PartnerPath(dirs, {}), problems)


def detect_format(root: Path) -> str:
    """The layout of ``root``: "folder" (a dataset.json or images/), "ade20k" or "coco-stuff"."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data-set folder; check the path (or leave data.root empty "
                        "for the built-in toy world)")
    if (root / "dataset.json").is_file():
        return "folder"
    if find_ade20k(root) is not None:
        return "ade20k"
    if find_coco_stuff(root):
        return "coco-stuff"
    if (root / "images").is_dir():
        return "folder"
    raise DataError(f"{root}: cannot tell the data-set layout; expected images/ with labels|edges|depth|normals/ "
                    "(paired folders), images/training + annotations/training (ADE20K) or train2017/ + "
                    "stuffthingmaps_trainval2017/ (COCO-Stuff); see docs/datasets.md")


def discover(root: Path, fmt: str = "auto", fields: Iterable[Field | str] = ()) -> Layout:
    """List the data set at ``root`` in layout ``fmt`` ("auto" detects it); a paired-folder data set is
    listed for ``fields`` and every field the registered tasks declare."""
    root = Path(root).expanduser()
    fmt = detect_format(root) if fmt == "auto" else fmt
    if not root.is_dir():
        detect_format(root)  # raises the "no such folder" error
    if fmt in ("folder", "toyworld"):
        return discover_folder(root, fmt, fields)
    if fmt == "ade20k":
        return discover_ade20k(root)
    if fmt == "coco-stuff":
        return discover_coco_stuff(root)
    raise DataError(f"{root}: unknown data-set format '{fmt}'; use one of auto, {', '.join(FORMATS)}")


def dataset_meta(root: str | Path, fmt: str = "auto") -> DatasetMeta:
    """What the data set at ``root`` declares about itself (classes, palette, label mapping, depth
    encoding ...), from its ``dataset.json`` or its format; DataError when it cannot be listed."""
    return discover(Path(root), fmt).meta
