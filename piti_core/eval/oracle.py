"""The toy-world oracle: a small network that reads a toy-world image and predicts its label map,
depth and surface normals — the stand-in for the segmenters and depth/normal estimators the paper's
field runs on generated ADE20K/COCO images. It gives the mask, depth and normal tasks their
alignment metrics (:mod:`piti_core.eval.oracle_metrics`) and a feature space for FID/KID on the toy
world (:meth:`Oracle.features`).

    >>> oracle = load_oracle("cpu")                 # the shipped weights (piti_core/assets/oracle-tiny/)
    >>> out = oracle.predict(images)                # images (B, 3, H, W) in [-1, 1]
    >>> out["labels"], out["depth"], out["normals"] # (B, H, W) ids, (B, 1, H, W) metres, (B, 3, H, W) unit
    >>> oracle.features(images)                     # (B, 128)

Images of another size than the oracle's (64 px) are resized to it (bilinear, antialiased when
shrinking; non-square images are squashed) and predictions are resized back to ``size`` (default:
the input's size). A weights folder holds ``config.json`` (network shape, classes, conventions) and
``oracle.safetensors``; ``training.json`` records the command that trained it and its held-out
scores (docs/oracle.md). ``piti data oracle --out DIR`` trains one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from piti_core.errors import CheckpointError
from piti_core.eval.oracle_model import OracleConfig, OracleNet

FORMAT = "piti-oracle/1"
WEIGHTS = "oracle.safetensors"
CONFIG = "config.json"
TRAINING = "training.json"
#: Predicted log depth is clamped to this range (metres) before exponentiating.
DEPTH_RANGE_M = (0.1, 100.0)


def shipped_oracle_dir() -> Path:
    """Folder of the oracle shipped with piti."""
    return Path(__file__).resolve().parent.parent / "assets" / "oracle-tiny"


class Oracle(nn.Module):
    """:class:`OracleNet` with input/output resizing and decoded predictions; always in eval mode."""

    def __init__(self, net: OracleNet, classes: tuple[str, ...]):
        super().__init__()
        self.net = net
        self.classes = tuple(classes)
        self.size = net.cfg.size

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the oracle reads RGB batches (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float().clamp(-1, 1)
        if x.shape[-2:] != (self.size, self.size):
            shrink = min(x.shape[-2:]) > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=shrink)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor, size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Raw head outputs resized to ``size`` (default: the input's): ``logits``, ``logdepth``, ``normals``."""
        out = self.net(self._fit(images))
        size = tuple(images.shape[-2:]) if size is None else ((size, size) if isinstance(size, int) else tuple(size))
        if tuple(out["logits"].shape[-2:]) != size:
            out = {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in out.items()}
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: int | tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """``labels`` (B, H, W) int64, ``depth`` (B, 1, H, W) metres (also where it predicts sky),
        ``normals`` (B, 3, H, W) unit vectors (+x right, +y up, +z toward the camera) and ``logits``."""
        out = self(images, size)
        lo, hi = (math.log(v) for v in DEPTH_RANGE_M)
        return {
            "logits": out["logits"],
            "labels": out["logits"].argmax(1),
            "depth": out["logdepth"].clamp(lo, hi).exp(),
            "normals": F.normalize(out["normals"], dim=1, eps=1e-6),
        }

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled bottleneck features ``(B, D)`` (float32) for FID/KID in the oracle's feature space."""
        return self.net.features(self._fit(images)).float()

    def train(self, mode: bool = True) -> "Oracle":  # noqa: D102 - a loaded oracle only infers
        return super().train(False)


def oracle_config_dict(cfg: OracleConfig, classes) -> dict:
    """The ``config.json`` of a weights folder."""
    return {
        "format": FORMAT, "network": cfg.to_dict(), "classes": list(classes),
        "input": "RGB (B, 3, S, S) in [-1, 1] at network.size px",
        "outputs": {"logits": "class scores over classes", "logdepth": "natural log of camera z-distance, metres",
                    "normals": "camera space (+x right, +y up, +z toward the camera), unnormalised"},
        "features": f"global average of the bottleneck, {cfg.widths[-1]} dims",
    }


def _read_config(folder: Path) -> tuple[OracleConfig, tuple[str, ...]]:
    path = folder / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        return OracleConfig(**raw["network"]), tuple(raw["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a toy-world oracle config ({str(exc).splitlines()[0]}); retrain it "
                              "with `piti data oracle --out DIR`") from None


def load_oracle(device: str | torch.device = "cpu", path: str | Path | None = None) -> Oracle:
    """The oracle in ``path`` (a folder with config.json + oracle.safetensors; default: the shipped one)
    on ``device``, in eval mode with gradients off. Raises :class:`CheckpointError` (one line) when the
    files are missing, unreadable or do not match the network or the toy world's classes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.data.toyworld import CLASSES

    folder = Path(path).expanduser() if path is not None else shipped_oracle_dir()
    weights = folder / WEIGHTS
    if not (folder / CONFIG).is_file() or not weights.is_file():
        raise CheckpointError(f"toy-world oracle not found: {folder} needs {CONFIG} and {WEIGHTS}; reinstall piti "
                              "or train one with `piti data oracle --out DIR`")
    cfg, classes = _read_config(folder)
    if classes != tuple(CLASSES) or cfg.num_classes != len(CLASSES):
        raise CheckpointError(f"{folder / CONFIG}: the oracle was trained for other classes than this toy world's "
                              f"({len(classes)} vs {len(CLASSES)}); retrain it with `piti data oracle --out DIR`")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: cannot read the oracle's weights ({str(exc).splitlines()[0]}); "
                              "reinstall piti or retrain it") from None
    net = OracleNet(cfg)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:200]
        raise CheckpointError(f"{weights}: the weights do not match {CONFIG} ({detail}); retrain the oracle") from None
    oracle = Oracle(net, classes).to(device).eval()
    oracle.requires_grad_(False)
    return oracle


_SHARED: dict[str, Oracle] = {}


def shared_oracle(device: str | torch.device = "cpu") -> Oracle:
    """The shipped oracle on ``device``, loaded once per process (for per-batch alignment metrics).
    It is shared: do not modify it."""
    key = str(torch.device(device))
    if key not in _SHARED:
        _SHARED[key] = load_oracle(device)
    return _SHARED[key]


def is_toyworld_data(cfg) -> bool:
    """Whether ``cfg.data`` is the toy world: the built-in one (empty ``data.root``) or a folder written
    by ``piti data toyworld`` (its dataset.json names the toy-world generator)."""
    root = getattr(cfg.data, "root", "")
    if not root or getattr(cfg.data, "format", "") == "toyworld":
        return True
    try:
        info = json.loads((Path(root).expanduser() / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and (str(info.get("generator", "")).startswith("piti toyworld")
                                       or info.get("name") == "toyworld")
