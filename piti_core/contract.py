"""The public plugin contract: everything a piti plugin may import, from one module.

A plugin imports from here (and from torch, numpy, PIL) and nowhere else in piti; these names stay
stable within a major :data:`CONTRACT_VERSION`, whatever moves inside piti::

    from piti_core.contract import ConditionSpec, Field, Task, hookimpl, require_contract

    require_contract(">=2.0")  # a clear PluginError when the installed piti is too old

Importing this module is light (no torch, no pytest): every name is resolved on first use.

=====================  ==============================================================================
group                  names
=====================  ==============================================================================
the task contract      Task, ConditionSpec, hookimpl
data fields            Field, IMAGE, LABELS, EDGES, DEPTH, NORMALS, RESAMPLING
condition files        load_rgb, is_pil, as_path, fit_condition, fit_field (``preprocess`` helpers)
readers                read_image, read_labels, read_edges, read_depth, read_normals, decode_normals,
                       map_colours, opaque_labels, to_rgb, DatasetMeta, DepthSpec, dataset_meta
transforms             crop_box, resize_field, JointAugment
derived conditions     canny_edges, normals_from_depth, encode_normals_rgb, register_preprocessor,
                       Preprocessor
metrics                Metric, MeanMetric, MetricSkipped, MetricValue, MetricBatch, EvalContext,
                       FeatureSet
errors                 PitiError, DataError, ConfigError, UsageError, PluginError, CheckpointError
evaluation helpers     is_toyworld_data, oracle_alignment, TOYWORLD_CLASSES, TOYWORLD_PALETTE,
                       hed_weights_path, edges_from_photo
testing (pytest)       assert_task_contract, assert_field_contract, assert_sampler_contract,
                       task_config, make_plugin_module, FakeEntryPoint
version                CONTRACT_VERSION, require_contract
=====================  ==============================================================================

See docs/plugins.md ("The public contract").
"""

from __future__ import annotations

import importlib
import re

CONTRACT_VERSION = "2.0"

_EXPORTS = {
    # the task contract
    "Task": "piti_core.tasks", "ConditionSpec": "piti_core.tasks", "hookimpl": "piti_core.hookspecs",
    # data fields
    "Field": "piti_core.data.fields", "IMAGE": "piti_core.data.fields", "LABELS": "piti_core.data.fields",
    "EDGES": "piti_core.data.fields", "DEPTH": "piti_core.data.fields", "NORMALS": "piti_core.data.fields",
    "RESAMPLING": "piti_core.data.fields",
    # a user's condition file
    "load_rgb": "piti_core.data.conditions", "is_pil": "piti_core.data.conditions",
    "as_path": "piti_core.data.conditions", "fit_condition": "piti_core.data.conditions",
    "fit_field": "piti_core.data.conditions",
    # readers
    "read_image": "piti_core.data.readers", "read_labels": "piti_core.data.readers",
    "read_edges": "piti_core.data.readers", "read_depth": "piti_core.data.readers",
    "read_normals": "piti_core.data.readers", "decode_normals": "piti_core.data.readers",
    "map_colours": "piti_core.data.readers", "opaque_labels": "piti_core.data.readers",
    "to_rgb": "piti_core.data.readers", "DatasetMeta": "piti_core.data.records",
    "DepthSpec": "piti_core.data.records", "dataset_meta": "piti_core.data.formats",
    # transforms
    "crop_box": "piti_core.data.transforms", "resize_field": "piti_core.data.transforms",
    "JointAugment": "piti_core.data.transforms",
    # derived conditions
    "canny_edges": "piti_core.data.preprocess", "normals_from_depth": "piti_core.data.preprocess",
    "encode_normals_rgb": "piti_core.data.preprocess", "register_preprocessor": "piti_core.data.cache",
    "Preprocessor": "piti_core.data.cache",
    # metrics
    "Metric": "piti_core.metrics", "MeanMetric": "piti_core.metrics", "MetricSkipped": "piti_core.metrics",
    "MetricValue": "piti_core.metrics", "MetricBatch": "piti_core.metrics", "EvalContext": "piti_core.metrics",
    "FeatureSet": "piti_core.metrics",
    # errors
    "PitiError": "piti_core.errors", "DataError": "piti_core.errors", "ConfigError": "piti_core.errors",
    "UsageError": "piti_core.errors", "PluginError": "piti_core.errors", "CheckpointError": "piti_core.errors",
    # evaluation helpers
    "is_toyworld_data": "piti_core.eval.oracle", "oracle_alignment": "piti_core.eval.oracle_metrics",
    "TOYWORLD_CLASSES": ("piti_core.data.toyworld", "CLASSES"),
    "TOYWORLD_PALETTE": ("piti_core.data.toyworld", "PALETTE"),
    "hed_weights_path": "piti_core.models.hed", "edges_from_photo": "piti_core.models.hed",
    # testing helpers (import pytest when used)
    "assert_task_contract": "piti_core.testing", "assert_field_contract": "piti_core.testing",
    "assert_sampler_contract": "piti_core.testing", "task_config": "piti_core.testing",
    "make_plugin_module": "piti_core.testing",
    "FakeEntryPoint": "piti_core.testing",
}

__all__ = sorted([*_EXPORTS, "CONTRACT_VERSION", "require_contract"])


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'piti_core.contract' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return __all__


def _version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise ValueError(f"not a contract version: {text!r} (expected e.g. 2.0)")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (3 - len(parts))


_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
        "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def contract_satisfies(spec: str, version: str = CONTRACT_VERSION) -> bool:
    """Whether ``version`` meets ``spec``: comma-separated clauses like ">=2.0", "<3"."""
    ok = True
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(>=|<=|==|!=|>|<)?\s*([\d.]+)", clause)
        if m is None:
            raise ValueError(f"not a contract requirement: {clause!r} (expected e.g. '>=2.0' or '>=2.0,<3')")
        ok = ok and _OPS[m.group(1) or "=="](_version(version), _version(m.group(2)))
    return ok


def require_contract(spec: str) -> None:
    """Raise :class:`~piti_core.errors.PluginError` unless this piti's :data:`CONTRACT_VERSION` meets
    ``spec`` (e.g. ``">=2.0"`` or ``">=2.0,<3"``); call it at a plugin's import time."""
    if not contract_satisfies(spec):
        from piti_core.errors import PluginError

        raise PluginError(f"this plugin needs piti's plugin contract {spec}, but the installed piti provides "
                          f"{CONTRACT_VERSION}; upgrade piti (or install a plugin version made for it)")
