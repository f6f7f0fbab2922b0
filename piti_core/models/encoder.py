"""The PITI task encoder: a stride-16 CNN, then a pre-LN transformer with a CLS token appended last.

A condition image (B, C, S, S) becomes (S/16)² tokens of ``width`` channels (row-major over the
CNN's grid) plus one pooled vector, the final-LayerNorm'd CLS token. The decoder consumes the tokens
in every attention layer (``encoder_kv``) and the pooled vector through ``transformer_proj``.

Module and parameter names equal the official ones (``cnn.conv1..6``, ``cnn.norm1..5``,
``transformer.resblocks.{i}...``, ``final_ln``, ``cls_token``, ``positional_embedding``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from piti_core.errors import DataError
from piti_core.models.layers import LayerNorm32
from piti_core.models.transformer import Transformer


class CNN(nn.Module):
    """conv7×7 s1 → c0, then three conv3×3 s2 → c1..c3, conv3×3 s2 → width, conv3×3 s1 (no norm/act).

    Every conv but the last is followed by InstanceNorm (affine, no running stats) and LeakyReLU(0.2).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], width: int):
        super().__init__()
        c = list(channels)
        if len(c) != 4:
            raise ValueError(f"cnn_channels must hold 4 widths, got {tuple(c)}")
        self.conv1 = nn.Conv2d(in_channels, c[0], 7, 1, 3)
        self.norm1 = nn.InstanceNorm2d(c[0], affine=True)
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 2, 1)
        self.norm2 = nn.InstanceNorm2d(c[1], affine=True)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 2, 1)
        self.norm3 = nn.InstanceNorm2d(c[2], affine=True)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, 2, 1)
        self.norm4 = nn.InstanceNorm2d(c[3], affine=True)
        self.conv5 = nn.Conv2d(c[3], width, 3, 2, 1)
        self.norm5 = nn.InstanceNorm2d(width, affine=True)
        self.conv6 = nn.Conv2d(width, width, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = self.act(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        return self.conv6(x)


class TaskEncoder(nn.Module):
    """Maps a condition (B, in_channels, cond_size, cond_size) to ``(tokens, pooled)``.

    ``tokens`` is (B, (cond_size/16)², width), ``pooled`` is (B, width). With a spatial hint
    (``hint``: a :class:`~piti_core.models.hint.HintNet`) the output is ``(tokens, pooled, *hints)``.
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 512,
        layers: int = 8,
        heads: int = 8,
        cond_size: int = 256,
        cnn_channels: Sequence[int] = (32, 64, 128, 256),
        checkpointing: bool = False,
        hint: nn.Module | None = None,
    ):
        super().__init__()
        if cond_size % 16 or cond_size < 32:
            raise ValueError(f"cond_size must be a multiple of 16 and at least 32 (the stride-16 CNN's last "
                             f"instance norm needs a grid of 2×2 or more), got {cond_size}")
        self.in_channels = in_channels
        self.width = width
        self.cond_size = cond_size
        self.num_tokens = (cond_size // 16) ** 2
        self.cnn = CNN(in_channels, cnn_channels, width)
        self.transformer = Transformer(width, layers, heads, checkpointing=checkpointing)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        self.positional_embedding = nn.Parameter(torch.empty(1, self.num_tokens + 1, width))
        self.final_ln = LayerNorm32(width)
        self.hint = hint
        self.reset_embeddings()

    def reset_embeddings(self) -> None:
        """N(0, 0.01²) for the CLS token and positional embedding (the official code leaves them unset)."""
        nn.init.normal_(self.cls_token, std=0.01)
        nn.init.normal_(self.positional_embedding, std=0.01)

    @classmethod
    def from_config(cls, enc_cfg, in_channels: int, checkpointing: bool = False, decoder=None) -> "TaskEncoder":
        """Build from a :class:`piti_core.config.EncoderConfig`; ``decoder`` (a UNetConfig) sizes the
        spatial hint when ``enc_cfg.hint_channels`` is set."""
        hint = None
        if enc_cfg.hint_channels:
            from piti_core.models.hint import HintNet, hint_levels

            if decoder is None:
                raise ValueError("encoder.hint_channels needs the decoder's config to size the hint")
            hint = HintNet(in_channels, enc_cfg.hint_channels, decoder.image_size, hint_levels(decoder))
        return cls(in_channels, enc_cfg.width, enc_cfg.layers, enc_cfg.heads, enc_cfg.cond_size,
                   tuple(enc_cfg.cnn_channels), checkpointing=checkpointing, hint=hint)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        expected = (self.in_channels, self.cond_size, self.cond_size)
        if cond.dim() != 4 or tuple(cond.shape[1:]) != expected:
            raise DataError(
                f"condition has shape {tuple(cond.shape)}, the task encoder expects (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); resize the condition to encoder.cond_size={self.cond_size}"
            )
        x = self.cnn(cond)
        x = x.flatten(2).transpose(1, 2)  # (B, N, width), row-major over the grid
        x = x + self.positional_embedding[:, 1:].to(x.dtype)
        cls = (self.cls_token + self.positional_embedding[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([x, cls], dim=1)  # the CLS token is the LAST position
        x = self.final_ln(self.transformer(x))
        if self.hint is not None:
            return (x[:, :-1], x[:, -1], *self.hint(cond))
        return x[:, :-1], x[:, -1]
