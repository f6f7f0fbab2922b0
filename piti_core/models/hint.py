"""The spatial hint: a condition map added to the decoder's features at every resolution.

Not part of official PITI. The PITI decoder sees its condition only as tokens in attention and as a
pooled vector; learning *where* things go from 16 tokens takes far longer than a CPU budget allows
(docs/training.md, "The spatial hint"). With ``encoder.hint_channels > 0`` the task encoder also runs
this small conv stack on the condition (resized to the decoder's size) and returns one feature map per
decoder resolution. :class:`~piti_core.models.unet.UNet` adds them to its features right after the
input conv and after each downsampling block, like T2I-Adapter / ControlNet residuals.

Every output conv starts at zero, so a prior decoder behaves exactly as before finetuning begins, and
the hint belongs to the encoder's parameters: stage 1 (decoder frozen) trains it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from piti_core.models.layers import zero_init


def hint_levels(unet_cfg) -> list[int]:
    """Channel widths at the points where :class:`UNet` takes a hint: input conv, then each downsample."""
    mult = tuple(unet_cfg.channel_mult)
    return [int(m * unet_cfg.model_channels) for m in mult[:1] + mult[:-1]]


class HintNet(nn.Module):
    """Condition (B, C, S, S) → feature maps (B, c_l, size/2^l, size/2^l) for each decoder level l."""

    def __init__(self, in_channels: int, hidden: int, image_size: int, level_channels: Sequence[int]):
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
        )
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU()) for _ in level_channels[1:]
        )
        self.outs = nn.ModuleList(zero_init(nn.Conv2d(hidden, c, 1)) for c in level_channels)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.image_size
        if cond.shape[-1] > s:
            cond = F.interpolate(cond, size=(s, s), mode="area")
        elif cond.shape[-1] < s:
            cond = F.interpolate(cond, size=(s, s), mode="bilinear", align_corners=False)
        h = self.stem(cond)
        outs = [self.outs[0](h)]
        for down, out in zip(self.downs, self.outs[1:]):
            h = down(h)
            outs.append(out(h))
        return tuple(outs)
