"""Data sets: on-disk layouts, readers, the shared torch Dataset, the preprocessing cache, the toy world.

Modules (importing this package imports none of them, nor torch)::

    records     Problem, Sample, DatasetMeta, DepthSpec: plain records
    fields      Field: what a task reads from a data set (folder, reader, resampling ...); the built-ins
    conditions  a user's condition file through the data layer (load_rgb, fit_condition, fit_field)
    formats     layouts (paired folders / toy world, ADE20K, COCO-Stuff), dataset.json, detection
    index       DatasetIndex, build_index(): deterministic splits and subsets
    readers     decode one file, or raise a one-line DataError naming it
    transforms  joint crop / resize / kornia flip of an image and its conditions
    dataset     build_dataset(), PairedDataset: what every task trains on
    validate    check_dataset(): what `piti data check` runs
    preprocess  edges from photos (Canny), normals from depth, depth from disparity
    cache       registered preprocessors and their cache under PITI_HOME
    default     the embedded default data set (a cached toy world)
    toyworld    the procedural toy-world renderer

The names below are also reachable here lazily, e.g. ``from piti_core.data import build_dataset``.
See docs/datasets.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataset": "dataset", "PairedDataset": "dataset",
    "build_index": "index", "index_from_config": "index", "DatasetIndex": "index",
    "check_dataset": "validate", "CheckReport": "validate",
    "cached_conditions": "cache", "register_preprocessor": "cache", "get_preprocessor": "cache",
    "Preprocessor": "cache", "piti_home": "cache",
    "default_dataset_root": "default", "ensure_toyworld": "default",
    "detect_format": "formats",
    "Problem": "records", "Sample": "records", "DatasetMeta": "records",
    "Field": "fields", "resolve_fields": "fields", "registered_fields": "fields",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"piti_core.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'piti_core.data' has no attribute {name!r}")
