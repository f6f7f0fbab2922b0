"""A caption encoder for pretraining the prior text-to-image, in the style of GLIDE's text transformer.

Tokenizer: UTF-8 bytes (ids 0..255) plus one padding id (256); no vocabulary file to download.
Captions are truncated to ``context_length`` bytes and right-padded. As in GLIDE, padded positions get
a learned ``padding_embedding`` instead of the token embedding, attention is bidirectional by default
(``causal=True`` gives a left-to-right mask), and the pooled vector is the final-LayerNorm'd **last**
position. The output interface equals the task encoder's: ``(tokens (B, L, width), pooled (B, width))``;
unlike the task encoder every position, the pooled one included, is returned as a token (GLIDE's
``xf_out`` holds all positions).

The empty caption ``""`` (all padding) is the null condition for classifier-free guidance.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from piti_core.errors import DataError
from piti_core.models.layers import LayerNorm32
from piti_core.models.transformer import Transformer

PAD_TOKEN = 256
VOCAB_SIZE = 257


def tokenize(captions: Sequence[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-level tokens (B, context_length) int64 and a bool mask, True on real (non-padding) bytes."""
    if isinstance(captions, str):
        raise DataError("tokenize() takes a list of captions, not a single string")
    tokens = torch.full((len(captions), context_length), PAD_TOKEN, dtype=torch.long)
    mask = torch.zeros((len(captions), context_length), dtype=torch.bool)
    for i, caption in enumerate(captions):
        data = list(str(caption).encode("utf-8")[:context_length])
        if data:
            tokens[i, : len(data)] = torch.tensor(data, dtype=torch.long)
            mask[i, : len(data)] = True
    return tokens, mask


def detokenize(tokens: torch.Tensor) -> list[str]:
    """Inverse of :func:`tokenize` (padding dropped, invalid UTF-8 replaced)."""
    return [bytes(int(t) for t in row if int(t) != PAD_TOKEN).decode("utf-8", errors="replace")
            for row in tokens]


class TextEncoder(nn.Module):
    """GLIDE-style caption transformer: token + positional (+ padding) embeddings, transformer, final LN."""

    def __init__(self, width: int = 512, layers: int = 16, heads: int = 8, context_length: int = 128,
                 causal: bool = False, vocab_size: int = VOCAB_SIZE, checkpointing: bool = False):
        super().__init__()
        self.width = width
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.padding_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, causal=causal, checkpointing=checkpointing)
        self.final_ln = LayerNorm32(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.padding_embedding, std=0.01)

    @classmethod
    def from_config(cls, text_cfg, width: int, checkpointing: bool = False) -> "TextEncoder":
        """Build from a :class:`piti_core.config.TextConfig`; ``width`` is ``EncoderConfig.width``."""
        return cls(width, text_cfg.layers, text_cfg.heads, text_cfg.context_length,
                   causal=text_cfg.causal, checkpointing=checkpointing)

    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, context_length) from :func:`tokenize`; ``mask`` defaults to ``tokens != PAD_TOKEN``."""
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise DataError(f"caption tokens have shape {tuple(tokens.shape)}, expected (B, {self.context_length}); "
                            "use piti_core.models.text.tokenize(captions, context_length)")
        tokens = tokens.long()
        if mask is None:
            mask = tokens != PAD_TOKEN
        x = self.token_embedding(tokens) + self.positional_embedding[None]
        x = torch.where(mask[..., None], x, self.padding_embedding[None].to(x.dtype))
        x = self.final_ln(self.transformer(x))
        return x, x[:, -1]
