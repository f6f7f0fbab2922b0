"""pix2pix PatchGAN discriminator, as used by the official PITI upsampler (spec §6).

``NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)`` with InstanceNorm (no affine, no running
statistics)::

    conv4×4 s2  3 → 64            + LeakyReLU(0.2)
    conv4×4 s2  64 → 128   + IN   + LeakyReLU(0.2)
    conv4×4 s2  128 → 256  + IN   + LeakyReLU(0.2)
    conv4×4 s1  256 → 512  + IN   + LeakyReLU(0.2)
    conv4×4 s1  512 → 1

All convolutions have a bias (pix2pix drops it only with BatchNorm), padding 1. A 256×256 input
gives a 30×30 patch map, 64×64 gives 6×6. ``ndf`` scales every width (16 for the tiny preset). The
module keeps pix2pix's ``model.<i>`` parameter names. It judges images alone (unconditional).
"""

from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if ndf < 1 or n_layers < 1:
            raise ValueError(f"NLayerDiscriminator needs ndf >= 1 and n_layers >= 1, got {ndf}, {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch scores (B, 1, h, w) (unbounded, higher = more real)."""
        return self.model(x)
