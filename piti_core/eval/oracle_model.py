"""The toy-world oracle's network: a small UNet that reads an RGB image and predicts, per pixel,
the toy world's class logits, log depth and a surface normal, plus a pooled feature vector.

Input: RGB ``(B, 3, S, S)`` in [-1, 1] at the resolution it was trained at (``OracleConfig.size``);
:class:`piti_core.eval.oracle.Oracle` resizes other sizes. Outputs (same S):

* ``logits``  (B, num_classes, S, S)  class scores over :data:`piti_core.data.toyworld.CLASSES`
* ``logdepth`` (B, 1, S, S)           natural log of the camera z-distance in metres (sky: unused)
* ``normals`` (B, 3, S, S)            unnormalised; the unit normal is ``normals / |normals|``

:meth:`OracleNet.features` is the global average of the bottleneck ``(B, widths[-1])``, for FID/KID in
the oracle's feature space. GroupNorm (not BatchNorm): the network behaves the same on one image as on
a batch, and on generated images whose statistics differ from the training renders.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field, frozen
from torch import nn


@frozen
class OracleConfig:
    """Shape of the network (stored as the ``config.json`` next to the weights)."""

    size: int = field(default=64, validator=attrs.validators.gt(7))
    num_classes: int = field(default=12, validator=attrs.validators.gt(1))
    widths: tuple[int, ...] = field(default=(16, 32, 64, 128, 256), converter=lambda v: tuple(int(x) for x in v))
    groups: int = 8

    def __attrs_post_init__(self):
        if len(self.widths) < 2 or any(w % self.groups for w in self.widths):
            raise ValueError(f"oracle widths must be >= 2 multiples of groups={self.groups}, got {self.widths}")
        if self.size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"oracle size {self.size} must be divisible by {2 ** (len(self.widths) - 1)}")

    def to_dict(self) -> dict:
        return {"size": self.size, "num_classes": self.num_classes, "widths": list(self.widths),
                "groups": self.groups}


def _conv(cin: int, cout: int, groups: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU()]


class _Up(nn.Module):
    """Upsample the deeper map, project it (1x1) to the skip's width, add the skip, conv3x3-GN-SiLU."""

    def __init__(self, cdeep: int, cout: int, groups: int):
        super().__init__()
        self.lateral = nn.Conv2d(cdeep, cout, 1)
        self.body = nn.Sequential(*_conv(cout, cout, groups))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(self.lateral(up) + skip)


class OracleNet(nn.Module):
    """Encoder: one conv at full resolution, then per level max-pool + two convs; decoder: FPN-like
    additive skips with one conv per level (cheap enough to train on a CPU); 1x1 head."""

    def __init__(self, cfg: OracleConfig = OracleConfig()):
        super().__init__()
        self.cfg = cfg
        w, g = cfg.widths, cfg.groups
        self.down = nn.ModuleList([nn.Sequential(*_conv(3, w[0], g))] + [
            nn.Sequential(nn.MaxPool2d(2), *_conv(w[i - 1], w[i], g), *_conv(w[i], w[i], g)) for i in range(1, len(w))
        ])
        self.up = nn.ModuleList([_Up(w[i + 1], w[i], g) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], cfg.num_classes + 1 + 3, 1)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = self._encode(x)
        h = skips.pop()
        for block in self.up:
            h = block(h, skips.pop())
        out = self.head(h)
        k = self.cfg.num_classes
        return {"logits": out[:, :k], "logdepth": out[:, k:k + 1], "normals": out[:, k + 1:]}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally averaged bottleneck activations ``(B, widths[-1])``."""
        return self._encode(x)[-1].mean(dim=(2, 3))
