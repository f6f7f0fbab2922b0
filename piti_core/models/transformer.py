"""The pre-LN transformer used by the PITI task encoder and the caption encoder (GLIDE's ``xf.py``).

Module names follow the official checkpoints (``resblocks.{i}.attn.c_qkv`` ...). Our ``c_qkv`` holds
standard ``[Wq; Wk; Wv]`` blocks; the converter reorders the official per-head interleaved layout.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from piti_core.models.layers import LayerNorm32, attention, merge_heads, split_heads


class MultiheadAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.causal = causal
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_qkv(x).chunk(3, dim=-1)
        h = attention(split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads),
                      is_causal=self.causal)
        return self.c_proj(merge_heads(h))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()  # exact (erf) GELU, as the official code
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.attn = MultiheadAttention(width, heads, causal)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` pre-LN residual blocks over (B, L, width) sequences; no dropout."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, checkpointing: bool = False):
        super().__init__()
        self.width = width
        self.checkpointing = checkpointing
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x
