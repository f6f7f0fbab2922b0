"""`piti eval`: sample the validation split of a run's data set and score the samples.

For the first ``n`` validation items (in the split's fixed order) the run's cascade samples an image
from each condition; per batch the task's alignment metric (:meth:`piti_core.tasks.Task.alignment`)
is computed on the samples and, as a reference, on the real images, and the Inception features of
both are accumulated. At the end come FID and KID of the samples against the real images (at the
samples' resolution), and on the toy world also FID/KID in the feature space of the toy-world oracle
(:mod:`piti_core.eval.oracle`; not comparable with Inception FID).

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

from piti_core.errors import CheckpointError, PitiError

EVAL_FORMAT = "piti-eval/1"
KID_SUBSET = 1000  # torch-fidelity / clean-fid default, lowered to n for small evaluations
FID_UNBIASED_N = 2048  # below this many images FID is noticeably biased upward
Callback = Callable[[dict], None]

_HIGHER = ("f1", "iou", "acc", "delta", "precision", "recall", "psnr", "ssim")
_LOWER = ("fid", "kid", "chamfer", "rmse", "abs_rel", "absrel", "deg", "err", "angle", "lpips", "mse", "mae")


def direction(name: str) -> str:
    """"higher" / "lower" is better for a metric name, "" when the name does not tell."""
    low = name.lower()
    if any(k in low for k in _LOWER):
        return "lower"
    if any(k in low for k in _HIGHER):
        return "higher"
    return ""


@attrs.frozen
class Evaluation:
    record: dict  # JSON-able: metrics, data, settings, notes (what metrics.json holds)
    rows: list  # [condition, sample, ground truth] (3, H, W) in [0, 1] for the first items


def evaluate(run_dir, settings, *, data_root: str | None = None, n: int | None = None, device: str = "cpu",
             dtype: str = "fp32", fid: bool = True, fid_weights: str | None = None, sample_dir: Path | None = None,
             grid_items: int = 8, callback: Callback | None = None, compile: bool = False,
             claim: Callable[[list[str]], None] | None = None) -> Evaluation:
    """Sample the first ``n`` (default all) validation items of the run's data set and score them.

    ``settings`` is the run's :class:`~piti_core.config.SampleConfig` with the caller's changes;
    ``data_root`` replaces the run's ``data.root`` (format detected). ``sample_dir`` receives one PNG
    per sample. ``fid_weights`` is passed to :func:`~piti_core.eval.inception.load_fid_inception`; when
    it is None and the default weights are missing, FID/KID are reported as unavailable with a note;
    named weights are loaded first, so a bad file fails before anything else. FID/KID (Inception and
    oracle) need at least 2 images: with fewer they are skipped with a note.
    ``compile`` runs the decoders through torch.compile (:func:`piti_core.compile.compile_model`).
    ``claim`` receives the sample files' paths relative to the output folder (``samples/<stem>.png``)
    before any sampling (:meth:`piti_core.io.OutputFolder.claim`); the record lists them in ``files``.
    """
    from piti_core.generate import load_cascade, sample_cascade, save_png

    say = callback or (lambda event: None)
    dev = torch.device(device)
    inception, notes_fid = _inception(fid, fid_weights, dev)
    run, task, names, compute = load_cascade(run_dir, settings, device=device, dtype=dtype, compile=compile,
                                             verb="evaluate")
    cfg = attrs.evolve(run.config, sample=settings)
    if data_root is not None:
        cfg = attrs.evolve(cfg, data=attrs.evolve(cfg.data, root=str(data_root), format="auto"))
    up = "upsampler" in run.models
    sizes = (cfg.model.image_size, cfg.upsampler.image_size) if up else (cfg.model.image_size,)
    gt_key = "image_hr" if up else "image"
    ds = task.build_dataset(cfg, "val", image_sizes=sizes, train=False, callback=callback)
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
    oracle, note = _oracle(dev) if toy and total >= 2 else (None, None)
    if toy and total < 2:
        note = f"toy-world oracle FID/KID skipped: they need at least 2 images; n = {total}"
    if note:
        notes.append(note)
    feats: dict[str, list] = {"fake": [], "real": [], "oracle_fake": [], "oracle_real": []}  # (B, D) CPU chunks
    for note in notes:
        say({"event": "note", "message": note})
    say({"event": "eval-start", "total": total, "dataset": str(ds.root), "reference_cached": real_cached is not None})

    sums: dict[str, float] = {}
    real_sums: dict[str, float] = {}
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
        _accumulate(sums, task.alignment(final, batch, cfg), count)
        _accumulate(real_sums, task.alignment(gt, batch, cfg), count)
        with torch.inference_mode():
            if inception is not None:
                feats["fake"].append(inception(final).cpu())
                if real_cached is None:
                    feats["real"].append(inception(gt).cpu())
            if oracle is not None:
                feats["oracle_fake"].append(oracle.features(final).float().cpu())
                feats["oracle_real"].append(oracle.features(gt).float().cpu())
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

    metrics: dict[str, Any] = {}
    info: dict[str, dict] = {}
    if inception is not None:
        from piti_core.eval.fid import cached_stats

        real = real_cached
        if real is None:  # first evaluation of these images: store their statistics
            real = cached_stats(ref_key, lambda: _stats(feats["real"]), need_features=True)
        metrics.update(_fid_kid(real, _stats(feats["fake"]), "", info,
                                f"Inception-v3 pool3 (TF 2015-12-05), {resolution}px samples vs real images"))
    else:
        for name in ("fid", "kid", "kid_std"):
            metrics[name] = None
            info[name] = {"label": name.upper().replace("_STD", " std"), "better": direction(name),
                          "note": "unavailable (see the notes)" if fid else "skipped (--no-fid)"}
    for name, value in sums.items():
        metrics[name] = value / total
        info[name] = {"label": name, "better": direction(name), "note": f"alignment ({task.name} task)",
                      "real": real_sums[name] / total if name in real_sums else None}
    if oracle is not None:
        metrics.update(_fid_kid(_stats(feats["oracle_real"]), _stats(feats["oracle_fake"]), "oracle_", info,
                                "toy-world oracle features: NOT comparable with Inception FID"))
    record = {
        "format": EVAL_FORMAT, "run": str(run_dir), "task": task.name, "models": names,
        "data": {"root": str(ds.root), "format": ds.index.format, "split": "val", "n": total, "available": len(ds),
                 "toy_world": toy, "resolution": resolution, "resize": cfg.data.resize},
        "settings": {**attrs.asdict(settings), "device": str(dev), "dtype": str(compute).replace("torch.", ""),
                     "compile": compile},
        "metrics": {k: _finite(v) for k, v in metrics.items()},
        "metric_info": info,
        "reference": {"cache": str(_cache_path(ref_key)) if inception is not None else None,
                      "cached": real_cached is not None},
        "seconds": round(seconds, 3), "notes": notes, "grid_stems": grid_stems,
        "files": ["metrics.json", "report.html", *written],
    }
    return Evaluation(record=record, rows=rows)


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


def _stats(chunks: list):
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


def _oracle(dev):
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


def _fid_kid(real, fake, prefix: str, info: dict, note: str) -> dict:
    from piti_core.eval.fid import fid_from_stats, frechet_distance_features, kernel_inception_distance

    n = min(real.count, fake.count)
    if real.dims is not None and max(real.count, fake.count) < real.dims:
        fid = frechet_distance_features(real.features, fake.features)  # same value, an N×N SVD
    else:
        fid = fid_from_stats(real, fake)
    subset = min(KID_SUBSET, n)
    kid, kid_std = kernel_inception_distance(real.features, fake.features, subset_size=subset)
    label = "oracle " if prefix else ""
    info[f"{prefix}fid"] = {"label": f"{label}FID", "better": "lower", "note": note}
    info[f"{prefix}kid"] = {"label": f"{label}KID", "better": "lower", "note": f"subsets of {subset}"}
    one = subset == real.count == fake.count  # then every subset is the whole sets: one value, no spread
    info[f"{prefix}kid_std"] = {"label": f"{label}KID std", "better": "",
                                "note": "one subset (all images): no spread" if one else "over 100 subsets"}
    return {f"{prefix}fid": fid, f"{prefix}kid": kid, f"{prefix}kid_std": kid_std}


def _collate(items: list[dict], dev) -> dict:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals).to(dev) if isinstance(vals[0], torch.Tensor) else vals
    return out


def _accumulate(sums: dict, values: dict, count: int) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v) * count


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
