"""`piti eval`: sample the validation split of a run's data set and score the samples.

For the first ``n`` validation items (in the split's fixed order) the run's cascade samples an image
from each condition, and every registered metric that applies to the run's task (or those chosen,
``metrics``) sees each batch (:mod:`piti_core.metrics`). The built-in ones (``piti_plugins.metrics``)
are the task's alignment metric (:meth:`piti_core.tasks.Task.alignment`, on the samples and, as a
reference, on the real images), FID and KID of the samples against the real images (at the samples'
resolution), and on the toy world FID/KID in the feature space of the toy-world oracle
(:mod:`piti_core.eval.oracle`; not comparable with Inception FID). The Inception features are computed
here, once, when a chosen metric needs them.

The real images' Inception statistics are cached (:func:`piti_core.eval.fid.cached_stats`) under a
key naming the data set (root, format, split, the chosen files' names, sizes and mtimes), ``n``, the
resolution and the resize mode, so a second evaluation only runs the network on the samples.

Nothing is printed: ``callback`` receives ``{"event": ...}`` dicts (data-set events, ``eval-start``,
``sample-step``, ``eval-batch``, ``note``) for the caller to display.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from piti_core.data.dataset import require_paired_dataset
from piti_core.errors import CheckpointError, PitiError, PluginError, UsageError
from piti_core.metrics import EvalContext, FeatureSet, MetricBatch, MetricSkipped, MetricValue
from piti_core.sampling import steps_run

EVAL_FORMAT = "piti-eval/1"
KID_SUBSET = 1000  # torch-fidelity / clean-fid default, lowered to n for small evaluations
FID_UNBIASED_N = 2048  # below this many images FID is noticeably biased upward
Callback = Callable[[dict], None]



@attrs.frozen
class Evaluation:
    record: dict  # JSON-able: metrics, data, settings, notes (what metrics.json holds)
    rows: list  # [condition, sample, ground truth] (3, H, W) in [0, 1] for the first items


def evaluate(run_dir, settings, *, data_root: str | None = None, n: int | None = None, device: str = "cpu",
             dtype: str = "fp32", fid: bool = True, fid_weights: str | None = None, sample_dir: Path | None = None,
             grid_items: int = 8, callback: Callback | None = None, compile: bool = False,
             claim: Callable[[list[str]], None] | None = None, metrics=None) -> Evaluation:
    """Sample the first ``n`` (default all) validation items of the run's data set and score them.

    ``settings`` is the run's :class:`~piti_core.config.SampleConfig` with the caller's changes;
    ``data_root`` replaces the run's ``data.root`` (format detected). ``sample_dir`` receives one PNG
    per sample. ``metrics`` names the registered metrics to run (default: every one that applies to the
    run's task; an unknown name or one for another task is a UsageError listing the valid ones).
    ``fid_weights`` is passed to :func:`~piti_core.eval.inception.load_fid_inception`; when it is None
    and the default weights are missing, the metrics that need Inception features (FID/KID) are
    reported as unavailable with a note; named weights are loaded first, so a bad file fails before
    anything else. FID/KID (Inception and oracle) need at least 2 images: with fewer they are skipped
    with a note. ``compile`` runs the decoders through torch.compile (:func:`piti_core.compile.compile_model`).
    ``claim`` receives the sample files' paths relative to the output folder (``samples/<stem>.png``)
    before any sampling (:meth:`piti_core.io.OutputFolder.claim`); the record lists them in ``files``.
    """
    from piti_core.generate import load_cascade, sample_cascade, save_png

    say = callback or (lambda event: None)
    dev = torch.device(device)
    chosen = select_metrics(run_task_name(run_dir), metrics)
    wants_features = any("features" in m.needs for m in chosen)
    inception, notes_fid = _inception(fid and wants_features, fid_weights, dev)
    run, task, names, compute = load_cascade(run_dir, settings, device=device, dtype=dtype, compile=compile,
                                             verb="evaluate")
    cfg = attrs.evolve(run.config, sample=settings)
    if data_root is not None:
        cfg = attrs.evolve(cfg, data=attrs.evolve(cfg.data, root=str(data_root), format="auto"))
    up = "upsampler" in run.models
    sizes = (cfg.model.image_size, cfg.upsampler.image_size) if up else (cfg.model.image_size,)
    gt_key = "image_hr" if up else "image"
    ds = task.build_dataset(cfg, "val", image_sizes=sizes, train=False, callback=callback)
    require_paired_dataset(task, ds, "evaluation")
    total = len(ds) if n is None else min(n, len(ds))
    notes: list[str] = []
    if n is not None and n > len(ds):
        notes.append(f"the validation split has only {len(ds)} images; evaluated all of them instead of {n}")
    toy = _is_toy_world(ds, cfg)
    resolution = sizes[-1]
    ref_key = reference_key(ds, total, resolution, cfg.data)
    if claim is not None and sample_dir is not None:
        claim(_sample_names(ds, total))

    inception, notes_fid = _enough_images(inception, notes_fid, total)
    notes += notes_fid
    real_cached = _load_cached(ref_key) if inception is not None else None
    ctx = EvalContext(task=task, cfg=cfg, n=total, resolution=resolution, device=dev, toy_world=toy)
    no_features = "skipped (--no-fid)" if not fid else "unavailable (see the notes)"
    states, unavailable = _start_metrics(chosen, ctx, inception is not None, no_features, notes)
    feats: dict[str, list] = {"fake": [], "real": []}  # Inception features (B, D) CPU chunks
    for note in notes:
        say({"event": "note", "message": note})
    say({"event": "eval-start", "total": total, "dataset": str(ds.root), "reference_cached": real_cached is not None})

    rows: list = []
    grid_stems: list[str] = []
    stems: dict[str, int] = {}
    written: list[str] = []  # sample files, relative to the output folder
    gen = torch.Generator(device=dev).manual_seed(settings.seed)
    started = time.perf_counter()
    for start in range(0, total, settings.batch_size):
        stop = min(start + settings.batch_size, total)
        batch = _collate([ds[i] for i in range(start, stop)], dev)
        label = f"images {start + 1}-{stop} of {total}"
        _, final = sample_cascade(run, task, batch["cond"], cfg, generator=gen, dtype=compute, callback=callback,
                                  label=label)
        final = final.float().clamp(-1, 1)
        gt = batch[gt_key].float().clamp(-1, 1)
        count = stop - start
        features = None
        if inception is not None:
            with torch.inference_mode():
                features = {"samples": inception(final).cpu(),
                            "real": inception(gt).cpu() if real_cached is None else None}
            feats["fake"].append(features["samples"])
            if features["real"] is not None:
                feats["real"].append(features["real"])
        full = {"samples": final, "real": gt, "condition": batch["cond"], "batch": batch, "features": features}
        for metric in chosen:
            if metric.name in states:
                view = MetricBatch(**{k: v for k, v in full.items() if k in metric.needs})
                states[metric.name] = _call(metric, "update", states[metric.name], view, ctx)
        for i in range(count):
            stem = _unique(stems, str(batch["stem"][i]))
            if sample_dir is not None:
                save_png(Path(sample_dir) / f"{stem}.png", (final[i] + 1) / 2)
                written.append(f"samples/{stem}.png")
            if len(rows) < grid_items:
                grid_stems.append(stem)
                rows.append([task.visualize(batch["cond"][i].float().cpu(), cfg),
                             (final[i].cpu() + 1) / 2, (gt[i].cpu() + 1) / 2])
        say({"event": "eval-batch", "done": stop, "total": total})
    seconds = time.perf_counter() - started

    if inception is not None:
        from piti_core.eval.fid import cached_stats

        real = real_cached
        if real is None:  # first evaluation of these images: store their statistics
            real = cached_stats(ref_key, lambda: feature_stats(feats["real"]), need_features=True)
        ctx = attrs.evolve(ctx, features=FeatureSet(samples=feature_stats(feats["fake"]), real=real))
    values, info = _finalize_metrics(chosen, states, unavailable, ctx)
    record = {
        "format": EVAL_FORMAT, "run": str(run_dir), "task": task.name, "models": names,
        "data": {"root": str(ds.root), "format": ds.index.format, "split": "val", "n": total, "available": len(ds),
                 "toy_world": toy, "resolution": resolution, "resize": cfg.data.resize},
        "settings": {**attrs.asdict(settings), "device": str(dev), "dtype": str(compute).replace("torch.", ""),
                     "compile": compile},
        "steps_run": steps_run(cfg, upsampler="upsampler" in names),
        "metrics": {k: _finite(v) for k, v in values.items()},
        "metric_info": info,
        "metric_plugins": [m.name for m in chosen],
        "reference": {"cache": str(_cache_path(ref_key)) if inception is not None else None,
                      "cached": real_cached is not None},
        "seconds": round(seconds, 3), "notes": notes, "grid_stems": grid_stems,
        "files": ["metrics.json", "report.html", *written],
    }
    return Evaluation(record=record, rows=rows)


# ------------------------------------------------------------------------------------------ metrics
def select_metrics(task_name: str, names=None) -> list:
    """The registered metrics to run on a run of ``task_name``, in registration order: those ``names``
    (``piti eval --metric``), else every one that applies to the task. A name that is not registered or
    is for other tasks is a UsageError listing the valid ones."""
    from piti_core.plugins import get_plugin_manager

    registry = get_plugin_manager().metrics
    applicable = [m for m in registry.values() if m.applies_to(task_name)]
    if not names:
        return applicable
    valid = ", ".join(m.name for m in applicable) or "none"
    for name in names:
        if name not in registry:
            raise UsageError(f"unknown metric '{name}' (--metric); valid metrics for task '{task_name}': {valid}")
        if not registry[name].applies_to(task_name):
            raise UsageError(f"metric '{name}' (--metric) is for task(s) {', '.join(registry[name].tasks)}, not "
                             f"'{task_name}'; valid metrics for task '{task_name}': {valid}")
    return [m for m in applicable if m.name in set(names)]


def run_task_name(run_dir) -> str:
    """The task ``run.json`` of ``run_dir`` names ("" when none)."""
    from piti_core.runs import read_run_meta

    name = read_run_meta(run_dir).get("task")
    return name if isinstance(name, str) else ""


def _start_metrics(chosen: list, ctx: EvalContext, have_features: bool, no_features: str, notes: list):
    """``(states, unavailable)``: each runnable metric's state from ``start``; metrics whose needs cannot be
    met map to the reason. A metric that sits out (MetricSkipped) is in neither; its message joins ``notes``."""
    states: dict = {}
    unavailable: dict[str, str] = {}
    for metric in chosen:
        if "features" in metric.needs and not have_features:
            unavailable[metric.name] = no_features
            continue
        try:
            states[metric.name] = _call(metric, "start", ctx)
        except MetricSkipped as skipped:
            if str(skipped):
                notes.append(str(skipped))
    return states, unavailable


def _finalize_metrics(chosen: list, states: dict, unavailable: dict, ctx: EvalContext) -> tuple[dict, dict]:
    """``(metrics, metric_info)`` of the record: every value with its label, direction and note."""
    values: dict[str, Any] = {}
    info: dict[str, dict] = {}
    for metric in chosen:
        if metric.name in unavailable:
            result = metric.unavailable(unavailable[metric.name])
        elif metric.name in states:
            result = _call(metric, "finalize", states[metric.name], ctx)
        else:
            continue
        for name, value in _as_values(metric, result).items():
            values[name] = value.value
            better = metric.direction if value.better is None else value.better
            label = value.label or (metric.label if name == metric.name and metric.label else name)
            info[name] = {"label": label, "better": better, "note": value.note, **value.info}
    return values, info


def _as_values(metric, result) -> dict[str, MetricValue]:
    """A metric's result (number, None, MetricValue or a dict of them) as name -> MetricValue."""
    if not isinstance(result, dict):
        result = {metric.name: result}
    out = {}
    for name, value in result.items():
        if not isinstance(value, MetricValue):
            try:
                value = MetricValue(None if value is None else float(value))
            except (TypeError, ValueError):
                raise PluginError(f"metric '{metric.name}' returned {type(value).__name__} for '{name}'; "
                                  "expected a number, None or a MetricValue") from None
        out[name] = value
    return out


def _call(metric, method: str, *args):
    """``metric.<method>(*args)``; an exception other than piti's own or MetricSkipped is a PluginError
    naming the metric."""
    try:
        return getattr(metric, method)(*args)
    except (PitiError, MetricSkipped):
        raise
    except Exception as exc:
        raise PluginError(f"metric '{metric.name}': {method} raised {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------ pieces
def reference_key(ds, n: int, resolution: int, data_cfg) -> dict:
    """What the real images' statistics depend on: the data set, the chosen files, n, size, resize."""
    h = hashlib.sha256()
    for s in ds.samples[:n]:
        st = Path(s.image).stat()
        h.update(f"{s.stem}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"kind": "piti-eval-reference", "root": str(Path(ds.root).resolve()), "format": ds.index.format,
            "split": "val", "val_fraction": data_cfg.val_fraction, "limit": data_cfg.limit,
            "subset_seed": data_cfg.subset_seed, "n": n, "resolution": resolution, "resize": data_cfg.resize,
            "files": h.hexdigest()}


def feature_stats(chunks: list):
    """FeatureStats (features kept, for KID) of feature chunks, in one update: one D × D scatter product."""
    from piti_core.eval.fid import FeatureStats

    return FeatureStats(keep_features=True).update(torch.cat(chunks))


def _cache_path(key: dict) -> Path:
    from piti_core.eval.fid import stats_cache_path

    return stats_cache_path(key)


def _load_cached(key: dict):
    """The cached real-image statistics (with features, for KID) of ``key``, or None."""
    from piti_core.errors import DataError
    from piti_core.eval.fid import FeatureStats

    path = _cache_path(key)
    if not path.is_file():
        return None
    try:
        stats = FeatureStats.load(path)
    except DataError:
        return None  # damaged or foreign: recomputed and rewritten
    return stats if stats.features is not None else None


def _sample_names(ds, total: int) -> list[str]:
    """``samples/<stem>.png`` of the first ``total`` items, as the sampling loop names them."""
    seen: dict[str, int] = {}
    return [f"samples/{_unique(seen, str(s.stem))}.png" for s in ds.samples[:total]]


def _inception(fid: bool, weights: str | None, dev):
    """The FID network, or None with the notes that say why (named weights that fail are an error)."""
    if not fid:
        return None, []
    from piti_core.eval.inception import INSTALL_HINT, load_fid_inception

    try:
        net = load_fid_inception(weights, device=dev)
    except CheckpointError as exc:
        if weights is not None:
            raise  # the user named a file: a bad one is an error, not a silent skip
        return None, [f"FID/KID unavailable: {INSTALL_HINT}" if "no FID Inception weights" in str(exc)
                            else f"FID/KID unavailable: {exc}"]
    return net, []


def _enough_images(net, notes: list[str], n: int):
    """The FID network and its notes for ``n`` images: none below 2, a bias note below FID_UNBIASED_N."""
    if net is None:
        return None, notes
    if n < 2:
        return None, [*notes, f"FID/KID need at least 2 images; n = {n}"]
    if n < FID_UNBIASED_N:
        notes.append(f"FID on n = {n} images is biased upward (use n >= {FID_UNBIASED_N} for reportable numbers, "
                     f"compare FIDs only at equal n); KID uses subsets of {min(KID_SUBSET, n)}")
    return net, notes


def load_oracle(dev):
    """The toy-world oracle, or (None, note) when its module or weights are not installed."""
    try:
        from piti_core.eval.oracle import shared_oracle
    except ImportError:
        return None, "toy-world oracle FID/KID skipped: piti_core.eval.oracle is not available"
    try:
        return shared_oracle(dev), None
    except (PitiError, OSError) as exc:
        return None, f"toy-world oracle FID/KID skipped: {str(exc).splitlines()[0] if str(exc) else exc}"


def _is_toy_world(ds, cfg) -> bool:
    meta = ds.meta
    return (not cfg.data.root or ds.index.format == "toyworld" or meta.name == "toyworld"
            or str((meta.extra or {}).get("generator", "")).startswith("piti toyworld"))


def fid_kid(real, fake, prefix: str, note: str) -> dict[str, MetricValue]:
    """``{prefix}fid``, ``{prefix}kid`` and ``{prefix}kid_std`` of two FeatureStats (features kept)."""
    from piti_core.eval.fid import fid_from_stats, frechet_distance_features, kernel_inception_distance

    n = min(real.count, fake.count)
    if real.dims is not None and max(real.count, fake.count) < real.dims:
        fid = frechet_distance_features(real.features, fake.features)  # same value, an N×N SVD
    else:
        fid = fid_from_stats(real, fake)
    subset = min(KID_SUBSET, n)
    kid, kid_std = kernel_inception_distance(real.features, fake.features, subset_size=subset)
    label = "oracle " if prefix else ""
    one = subset == real.count == fake.count  # then every subset is the whole sets: one value, no spread
    return {
        f"{prefix}fid": MetricValue(fid, better="lower", label=f"{label}FID", note=note),
        f"{prefix}kid": MetricValue(kid, better="lower", label=f"{label}KID", note=f"subsets of {subset}"),
        f"{prefix}kid_std": MetricValue(kid_std, better="", label=f"{label}KID std",
                                        note="one subset (all images): no spread" if one else "over 100 subsets"),
    }


def _collate(items: list[dict], dev) -> dict:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals).to(dev) if isinstance(vals[0], torch.Tensor) else vals
    return out


def _finite(v):
    return v if v is None or math.isfinite(v) else None


def _unique(seen: dict, stem: str) -> str:
    k = seen.get(stem, 0)
    seen[stem] = k + 1
    return stem if k == 0 else f"{stem}-{k + 1}"


def earlier_eval_outputs(out_dir: Path) -> set[str]:
    """The files an earlier ``piti eval`` wrote into ``out_dir``, from its metrics.json ``files`` (empty
    when metrics.json is missing or not a piti evaluation; metrics.json and report.html alone for one
    that did not list its files)."""
    try:
        record = json.loads((Path(out_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(record, dict) or record.get("format") != EVAL_FORMAT:
        return set()
    files = record.get("files") if isinstance(record.get("files"), list) else []
    samples = {f for f in files if isinstance(f, str) and _is_sample_name(f)}
    return {"metrics.json", "report.html"} | samples


def _is_sample_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == "samples" and parts[1].endswith(".png") and "\\" not in parts[1]


def write_results(out_dir: Path, evaluation: Evaluation) -> dict:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir``; returns their paths."""
    from piti_core.eval.report import render_report
    from piti_core.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.html"}
    atomic_write_text(paths["metrics"], json.dumps(evaluation.record, indent=2) + "\n")
    atomic_write_text(paths["report"], render_report(evaluation.record, evaluation.rows))
    return {k: str(v) for k, v in paths.items()}
