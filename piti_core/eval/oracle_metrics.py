"""Alignment metrics through the toy-world oracle: does a generated image show the label map, depth
and normals it was conditioned on? The oracle (:mod:`piti_core.eval.oracle`) reads the samples and
its predictions are compared with the conditions' ground truth, as the paper's field runs a
segmenter on generated ADE20K/COCO images.

* labels: ``miou`` (mean over the classes present in the batch's targets or predictions of
  intersection / union, pixels pooled over the batch) and ``pixel_acc``; ignore-index pixels skipped.
* depth: ``absrel`` (mean |d̂ − d| / d) and ``delta1`` (share of pixels with max(d̂/d, d/d̂) < 1.25),
  per image after *median scaling* (d̂ times median(d) / median(d̂) over the valid pixels, as in
  monocular-depth evaluation since Eigen et al. 2014) and then averaged over images. The depth
  conditions are normalised per image, so a sample cannot know the scene's absolute scale.
  Given metric depth (the data set's ``depth``), that is the target. Given only the encoded
  condition (per-image normalised log depth in [-1, 1]), depth is known up to ``log d = a·c + b``;
  the target is that map fitted to the oracle's log depth by least squares (scale-and-shift
  invariance in log depth, the information the condition holds).
* normals: ``normal_deg``, the mean angle in degrees between the oracle's and the target's unit
  normals over the valid pixels of the batch (pooled).

A metric with no valid pixel in the batch is NaN. Predictions are made at the oracle's resolution
and resized (bilinear) to the targets' resolution.
"""

from __future__ import annotations

import math

import torch


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> dict[str, float]:
    """``pred``, ``target``: (B, H, W) class ids. mIoU over the classes present, and pixel accuracy."""
    target = target.long().to(pred.device)
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    if not valid.any():
        return {"miou": math.nan, "pixel_acc": math.nan}
    t, p = target[valid], pred[valid].long().clamp(0, num_classes - 1)
    conf = torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return {"miou": float((inter[present] / union[present]).mean()), "pixel_acc": float(inter.sum() / conf.sum())}


def depth_scores(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """``pred``, ``target``: (B, 1, H, W) positive depths; median-scaled AbsRel and δ<1.25, per image."""
    pred, target = pred.double(), target.double().to(pred.device)
    ok = (target > 0) & torch.isfinite(target)
    if valid is not None:
        ok &= valid.to(pred.device).bool()
    absrel, delta1 = [], []
    for p, t, m in zip(pred, target, ok):
        if not m.any():
            continue
        p, t = p[m].clamp_min(1e-6), t[m]
        p = p * (t.median() / p.median())
        absrel.append(float(((p - t).abs() / t).mean()))
        delta1.append(float((torch.maximum(p / t, t / p) < 1.25).double().mean()))
    if not absrel:
        return {"absrel": math.nan, "delta1": math.nan}
    return {"absrel": sum(absrel) / len(absrel), "delta1": sum(delta1) / len(delta1)}


def depth_from_encoding(cond: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image normalised log depth ``cond`` (B, 1, H, W; -1 where invalid) -> (target depth, valid):
    ``exp(a·cond + b)`` with (a, b) the least-squares fit of the oracle's log depth ``log pred``."""
    cond = cond.double().to(pred.device)
    logp = pred.double().clamp_min(1e-6).log()
    valid = cond > -1 + 1e-6  # the encoding marks invalid pixels -1 (the nearest valid pixel too: dropped)
    target = torch.zeros_like(cond)
    for i in range(cond.shape[0]):
        m = valid[i]
        if m.sum() < 2:
            continue
        c, y = cond[i][m], logp[i][m]
        var = (c - c.mean()).pow(2).mean()
        a = ((c - c.mean()) * (y - y.mean())).mean() / var if var > 0 else c.new_zeros(())
        target[i][m] = (a * (c - c.mean()) + y.mean()).exp()
    return target, valid


def normal_scores(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """``pred``, ``target``: (B, 3, H, W) normals; mean angular error in degrees over valid pixels."""
    target = target.float().to(pred.device)
    norm = target.norm(dim=1)
    ok = norm > 0.5
    if valid is not None:
        ok &= valid.to(pred.device).bool().reshape(ok.shape)
    if not ok.any():
        return {"normal_deg": math.nan}
    p = torch.nn.functional.normalize(pred.float(), dim=1, eps=1e-6)
    t = target / norm.clamp_min(1e-6).unsqueeze(1)
    cos = (p * t).sum(1)[ok].clamp(-1, 1)
    return {"normal_deg": float(torch.rad2deg(torch.acos(cos)).mean())}


def oracle_alignment(samples: torch.Tensor, *, labels: torch.Tensor | None = None,
                     depth: torch.Tensor | None = None, depth_valid: torch.Tensor | None = None,
                     depth_encoded: torch.Tensor | None = None, normals: torch.Tensor | None = None,
                     normals_valid: torch.Tensor | None = None, oracle=None) -> dict[str, float]:
    """The metrics of every target given, from one oracle pass over ``samples`` (B, 3, H, W) in [-1, 1].

    ``labels`` (B, S, S) class ids of the toy world (255 = ignore); ``depth`` (B, 1, S, S) metres with
    optional ``depth_valid``, or ``depth_encoded`` (B, 1, S, S) the depth task's encoding; ``normals``
    (B, 3, S, S) with optional ``normals_valid``. ``oracle`` defaults to the shipped one on the
    samples' device (:class:`~piti_core.errors.CheckpointError` if it cannot be loaded).
    """
    from piti_core.eval.oracle import shared_oracle

    targets = [t for t in (labels, depth, depth_encoded, normals) if t is not None]
    if not targets:
        return {}
    oracle = oracle if oracle is not None else shared_oracle(samples.device)
    out: dict[str, float] = {}
    by_size: dict[tuple[int, int], dict] = {}

    def predict(size) -> dict:
        size = tuple(int(s) for s in size)
        if size not in by_size:
            by_size[size] = oracle.predict(samples, size=size)
        return by_size[size]

    if labels is not None:
        pred = predict(labels.shape[-2:])
        out.update(segmentation_scores(pred["labels"], labels, len(oracle.classes)))
    if depth is not None:
        pred = predict(depth.shape[-2:])
        out.update(depth_scores(pred["depth"], depth.reshape(pred["depth"].shape), depth_valid))
    elif depth_encoded is not None:
        pred = predict(depth_encoded.shape[-2:])
        target, valid = depth_from_encoding(depth_encoded.reshape(pred["depth"].shape), pred["depth"])
        out.update(depth_scores(pred["depth"], target, valid))
    if normals is not None:
        pred = predict(normals.shape[-2:])
        out.update(normal_scores(pred["normals"], normals, normals_valid))
    return out
