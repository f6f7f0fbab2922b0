"""The colorize task's own encoder: a small conv stack pooled to a grid of tokens (no transformer)."""

import torch
from torch import nn


class ConvTokenEncoder(nn.Module):
    """Condition (B, C, S, S) -> (tokens (B, grid², width), pooled (B, width)).

    Two stride-2 convolutions see the luminance and the hints together, a 1x1 convolution lifts them
    to the decoder's token width, and an average pool to a grid x grid map gives the tokens the
    decoder attends to; their projected mean is the pooled vector added to the timestep embedding.
    """

    def __init__(self, in_channels: int, width: int, channels: int = 32, grid: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, width, 1))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.pooled = nn.Linear(width, width)

    def forward(self, cond: torch.Tensor):
        tokens = self.pool(self.features(cond)).flatten(2).transpose(1, 2)
        return tokens, self.pooled(tokens.mean(1))
