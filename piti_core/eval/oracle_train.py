"""Training and held-out evaluation of the toy-world oracle (``piti data oracle``; docs/oracle.md).

The oracle learns from freshly rendered toy-world samples (world ``seed``, indices ``0 .. n-1``) held
in memory, with random horizontal flips (normals' x negated), a random 2x down-and-up resampling (so
it also reads the base model's 32-px samples shown at 64 px), mild brightness/contrast jitter and
pixel noise (generated images are not clean renders). Loss: cross-entropy on the labels (classes
weighted by frequency^-1/2, so the small objects are not drowned by sky and ground) + L1 on log
depth (non-sky pixels) + (1 - cos) on the normals (non-sky pixels); AdamW with a one-cycle schedule.
It is evaluated on renders of another world seed (``eval_seed``) it never saw. No prints: progress
goes to ``callback(event_dict)``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import attrs
import torch
import torch.nn.functional as F
from attrs import field, frozen

from piti_core.eval.oracle import CONFIG, TRAINING, WEIGHTS, Oracle, oracle_config_dict
from piti_core.eval.oracle_metrics import depth_scores, normal_scores, segmentation_scores
from piti_core.eval.oracle_model import OracleConfig, OracleNet

Callback = Callable[[dict], None] | None


@frozen
class OracleTrainOptions:
    n: int = field(default=6000, validator=attrs.validators.gt(0))  # training renders
    seed: int = field(default=1000, validator=attrs.validators.ge(0))  # world seed of the training renders
    size: int = 64
    steps: int = field(default=3000, validator=attrs.validators.gt(0))
    batch_size: int = field(default=16, validator=attrs.validators.gt(0))
    lr: float = field(default=3e-3, validator=attrs.validators.gt(0))
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = field(default=(16, 32, 64, 128, 256), converter=lambda v: tuple(int(x) for x in v))
    eval_n: int = field(default=512, validator=attrs.validators.gt(0))
    eval_seed: int = field(default=777_777, validator=attrs.validators.ge(0))  # held-out world
    init_seed: int = 0  # weights, shuffling and augmentation

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}


def render_set(n: int, size: int, seed: int, start: int = 0, callback: Callback = None) -> dict[str, torch.Tensor]:
    """Toy-world samples as tensors: ``images`` uint8 (n, 3, S, S), ``labels`` uint8 (n, S, S),
    ``depth`` float32 (n, 1, S, S) metres (0 = sky), ``normals`` float32 (n, 3, S, S)."""
    from piti_core.data.toyworld import render_toyworld

    parts: dict[str, list] = {"images": [], "labels": [], "depth": [], "normals": []}
    chunk = 256
    for first in range(start, start + n, chunk):
        k = min(chunk, start + n - first)
        d = render_toyworld(k, size, seed, start=first)
        parts["images"].append(torch.from_numpy(d["images"]).permute(0, 3, 1, 2).contiguous())
        parts["labels"].append(torch.from_numpy(d["labels"]))
        parts["depth"].append(torch.from_numpy(d["depth"])[:, None])
        parts["normals"].append(torch.from_numpy(d["normals"]).permute(0, 3, 1, 2).contiguous())
        if callback is not None:
            callback({"event": "render", "done": first - start + k, "total": n})
    return {k: torch.cat(v) for k, v in parts.items()}


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1


def augment(batch: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Flip, down-up resampling, brightness/contrast jitter and noise on a float batch (see module doc)."""
    x, labels, depth, normals = batch["x"], batch["labels"], batch["depth"], batch["normals"].clone()
    b, s = x.shape[0], x.shape[-1]
    flip = torch.rand(b, generator=g) < 0.5
    if flip.any():
        x[flip], labels[flip], depth[flip] = x[flip].flip(-1), labels[flip].flip(-1), depth[flip].flip(-1)
        normals[flip] = normals[flip].flip(-1)
        normals[flip, 0] = -normals[flip, 0]
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        small = F.interpolate(x[blur], size=(s // 2, s // 2), mode="bilinear", align_corners=False, antialias=True)
        x[blur] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    gain = 1 + 0.15 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    shift = 0.08 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain + mean + shift
    sigma = 0.04 * torch.rand(b, 1, 1, 1, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) < 0.5)
    x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return {"x": x, "labels": labels, "depth": depth, "normals": normals}


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy weights ∝ frequency^-1/2 (mean 1 over pixels): small objects count more."""
    freq = torch.bincount(labels.flatten().long(), minlength=num_classes).double() + 1
    w = (freq / freq.sum()).rsqrt()
    return (w / (w * freq).sum() * freq.sum()).float()


def oracle_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    ce = F.cross_entropy(out["logits"], batch["labels"].long(), weight=weights)
    valid = batch["depth"] > 0  # (B, 1, S, S): not sky
    n = valid.sum().clamp_min(1)
    logd = batch["depth"].clamp_min(1e-3).log()
    l1 = ((out["logdepth"] - logd).abs() * valid).sum() / n
    cos = F.cosine_similarity(out["normals"], batch["normals"], dim=1, eps=1e-6).unsqueeze(1)
    ang = ((1 - cos) * valid).sum() / n
    return ce + l1 + ang, {"ce": ce.item(), "depth": l1.item(), "normal": ang.item()}


def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": to_unit(data["images"][idx]), "labels": data["labels"][idx].long(),
            "depth": data["depth"][idx], "normals": data["normals"][idx]}


def train_oracle(opts: OracleTrainOptions, callback: Callback = None, device: str | torch.device = "cpu"
                 ) -> tuple[OracleNet, dict]:
    """Render the training set, train on ``device``, return the network (on the CPU) and a record
    (options, final losses, seconds)."""
    t0 = time.monotonic()
    data = render_set(opts.n, opts.size, opts.seed, callback=callback)
    render_s = time.monotonic() - t0
    torch.manual_seed(opts.init_seed)
    g = torch.Generator().manual_seed(opts.init_seed)
    from piti_core.data.toyworld import CLASSES

    net = OracleNet(OracleConfig(size=opts.size, num_classes=len(CLASSES), widths=opts.widths)).to(device)
    weights = class_weights(data["labels"], len(CLASSES)).to(device)
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=opts.lr, total_steps=opts.steps, pct_start=0.1)
    net.train()
    order, pos, ema = torch.randperm(opts.n, generator=g), 0, None
    t1, cpu1 = time.monotonic(), time.process_time()
    for step in range(1, opts.steps + 1):
        if pos + opts.batch_size > opts.n:
            order, pos = torch.randperm(opts.n, generator=g), 0
        idx = order[pos:pos + opts.batch_size]
        pos += opts.batch_size
        batch = {k: v.to(device) for k, v in augment(_batch(data, idx), g).items()}
        loss, parts = oracle_loss(net(batch["x"]), batch, weights)
        value = loss.item()
        if not math.isfinite(value):
            from piti_core.errors import TrainingError

            raise TrainingError(f"oracle training diverged at step {step} (loss {value}); lower --lr")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        ema = parts if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in parts.items()}
        if callback is not None:
            callback({"event": "step", "step": step, "total": opts.steps, "loss": value, **ema})
    net.eval().cpu()
    record = {"options": opts.to_dict(), "render_seconds": round(render_s, 1),
              "train_seconds": round(time.monotonic() - t1, 1),
              "train_cpu_seconds": round(time.process_time() - cpu1, 1),
              "final_losses": {k: round(v, 4) for k, v in ema.items()},
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    return net, record


@torch.no_grad()
def evaluate_oracle(oracle: Oracle, n: int, seed: int, *, start: int = 0, size: int | None = None,
                    batch_size: int = 64, callback: Callback = None) -> dict:
    """Held-out scores of ``oracle`` on renders ``start .. start+n-1`` of world ``seed`` at ``size``
    (default: the oracle's): mIoU and pixel accuracy (pooled), per-class IoU, median-scaled and
    metric AbsRel, δ<1.25 (non-sky pixels), normal angular error in degrees (non-sky pixels)."""
    size = size or oracle.size
    data = render_set(n, size, seed, start=start, callback=callback)
    preds = {"labels": [], "depth": [], "normals": []}
    for first in range(0, n, batch_size):
        out = oracle.predict(to_unit(data["images"][first:first + batch_size]))
        for k in preds:
            preds[k].append(out[k])
    pred = {k: torch.cat(v) for k, v in preds.items()}
    k = len(oracle.classes)
    seg = segmentation_scores(pred["labels"], data["labels"], k)
    t, p = data["labels"].long().flatten(), pred["labels"].flatten()
    per_class = {}
    for c, name in enumerate(oracle.classes):
        union = int(((t == c) | (p == c)).sum())
        per_class[name] = round(int(((t == c) & (p == c)).sum()) / union, 4) if union else None
    valid = data["depth"] > 0
    metric = float(((pred["depth"] - data["depth"]).abs() / data["depth"].clamp_min(1e-6))[valid].mean())
    return {"n": n, "seed": seed, "start": start, "size": size, **seg, "iou": per_class,
            **depth_scores(pred["depth"], data["depth"], valid), "absrel_metric": metric,
            **normal_scores(pred["normals"], data["normals"], valid.squeeze(1))}


def check_oracle_out(folder: str | Path, overwrite: bool) -> Path:
    """UsageError unless ``folder`` can take an oracle: empty, or (with ``overwrite``) holding an earlier
    oracle whose three files are the only ones replaced; a user's file of the same name is never replaced."""
    from piti_core.io import OutputFolder

    folder = Path(folder).expanduser()
    names = (WEIGHTS, TRAINING, CONFIG)
    ours = names if _is_oracle(folder) else ()
    OutputFolder(folder, owned=ours, overwrite=overwrite, command="piti data oracle").claim(names)
    return folder


def _is_oracle(folder: Path) -> bool:
    """Whether ``folder`` holds an oracle :func:`save_oracle` wrote (its weights' metadata says so)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as fh:
            return (fh.metadata() or {}).get("format") == "piti-oracle/1"
    except (SafetensorError, OSError):
        return False


def save_oracle(folder: str | Path, net: OracleNet, record: dict, overwrite: bool = False) -> Path:
    """Write ``oracle.safetensors``, ``training.json`` and ``config.json`` (last) into ``folder``, atomically;
    refuses a non-empty folder unless ``overwrite``."""
    from safetensors.torch import save_file

    from piti_core.data.toyworld import CLASSES, VERSION
    from piti_core.io import atomic_write, atomic_write_text

    folder = check_oracle_out(folder, overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "piti-oracle/1"}))
    record = dict(record, toyworld_version=VERSION, python=sys.version.split()[0])
    atomic_write_text(folder / TRAINING, json.dumps(record, indent=2) + "\n")
    atomic_write_text(folder / CONFIG, json.dumps(oracle_config_dict(net.cfg, CLASSES), indent=2) + "\n")
    return folder
