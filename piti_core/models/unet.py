"""The GLIDE/ADM UNet with condition tokens (spec §1.2-1.3).

Layout and names follow the official checkpoints so conversion is a static table:
``time_embed.{0,2}``, ``input_blocks.{i}.{j}``, ``middle_block.{0,1,2}``, ``output_blocks.{j}.{k}``,
``out.{0,2}``, ``transformer_proj``; ResBlocks hold ``in_layers.{0,2}``, ``emb_layers.1``,
``out_layers.{0,3}``, ``skip_connection``; attention blocks hold ``norm``, ``qkv``, ``encoder_kv``,
``proj_out``. Differences from the official modules: the 1×1 Conv1d's are ``nn.Linear`` and ``qkv`` /
``encoder_kv`` hold standard ``[Q; K; V]`` / ``[K; V]`` blocks (the converter reorders the official
per-head interleaved rows).

Condition tokens (B, N, cond_width) enter every attention layer as extra keys/values placed *before*
the spatial ones; the pooled condition (B, cond_width) goes through ``transformer_proj`` and is added to
the timestep embedding.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from piti_core.errors import DataError
from piti_core.models.layers import (Conv2d, Dropout, GroupNorm32, attention, merge_heads, split_heads,
                                     timestep_embedding, zero_init)


class Upsample(nn.Module):
    """Nearest ×2, optionally followed by a 3×3 conv (used only when ``resblock_updown`` is off)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Stride-2 3×3 conv, or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """ADM residual block with timestep conditioning (scale-shift norm) and optional up/down sampling."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, swish=True), nn.Identity(), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, swish=not use_scale_shift_norm),
            nn.SiLU() if use_scale_shift_norm else nn.Identity(),
            Dropout(dropout),
            zero_init(Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions with the condition tokens prepended as keys/values."""

    def __init__(self, channels: int, num_head_channels: int, cond_width: Optional[int]):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"attention width {channels} is not a multiple of num_head_channels {num_head_channels}")
        self.heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.encoder_kv = nn.Linear(cond_width, 2 * channels) if cond_width else None
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(b, hh * ww, c)  # (B, L, C), free when channels_last
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(h).chunk(3, dim=-1))
        if self.encoder_kv is not None and tokens is not None:
            ek, ev = (split_heads(t, self.heads) for t in self.encoder_kv(tokens).to(q.dtype).chunk(2, dim=-1))
            k = torch.cat([ek, k], dim=2)  # condition tokens BEFORE the spatial positions
            v = torch.cat([ev, v], dim=2)
        h = self.proj_out(merge_heads(attention(q, k, v)))
        return x + h.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


class Blocks(nn.Sequential):
    """A sequence of UNet layers; passes the timestep embedding to ResBlocks, tokens to attention."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tokens: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, tokens)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """GLIDE's ``Text2ImUNet`` (or ``SuperResText2ImUNet`` when ``super_res`` > 0) without a text encoder.

    ``cond_width`` is the width of the condition tokens / pooled vector (None: unconditional, no
    ``encoder_kv`` and no ``transformer_proj``). ``attention_resolutions`` are feature-map sizes
    (e.g. 32, 16, 8): attention is used where ``image_size // ds`` is listed.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 6,
        model_channels: int = 192,
        num_res_blocks: int = 3,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        attention_resolutions: Sequence[int] = (32, 16, 8),
        num_head_channels: int = 64,
        dropout: float = 0.1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        super_res: int = 0,
        cond_width: Optional[int] = 512,
        checkpointing: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        if super_res and in_channels % 2:
            raise ValueError(f"a super-resolution UNet takes x_t ‖ low_res, in_channels must be even, got {in_channels}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.super_res = super_res
        self.cond_width = cond_width
        self.checkpointing = checkpointing
        self.channels_last = channels_last
        attention_ds = {image_size // r for r in attention_resolutions}
        emb_dim = 4 * model_channels

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, **kw)

        def attn(ch):
            return AttentionBlock(ch, num_head_channels, cond_width)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Blocks(Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        self.hint_at = [0]  # input blocks after which a spatial hint is added (input conv, downsamples)
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(Blocks(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(Blocks(down))
                self.hint_at.append(len(self.input_blocks) - 1)
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = Blocks(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(Blocks(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch, swish=True), nn.Identity(), zero_init(Conv2d(ch, out_channels, 3, padding=1))
        )
        self.transformer_proj = nn.Linear(cond_width, emb_dim) if cond_width else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg, cond_width: Optional[int]) -> "UNet":
        """Build from a :class:`piti_core.config.UNetConfig`."""
        return cls(
            image_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            model_channels=cfg.model_channels, num_res_blocks=cfg.num_res_blocks,
            channel_mult=tuple(cfg.channel_mult), attention_resolutions=tuple(cfg.attention_resolutions),
            num_head_channels=cfg.num_head_channels, dropout=cfg.dropout,
            use_scale_shift_norm=cfg.use_scale_shift_norm, resblock_updown=cfg.resblock_updown,
            super_res=cfg.super_res, cond_width=cond_width, checkpointing=cfg.checkpointing,
            channels_last=cfg.channels_last,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def _run(self, block: Blocks, h, emb, tokens):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, tokens, use_reentrant=False)
        return block(h, emb, tokens)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        tokens: Optional[torch.Tensor] = None,
        pooled: Optional[torch.Tensor] = None,
        low_res: Optional[torch.Tensor] = None,
        hints: Optional[Sequence[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """x (B, C, H, W), timesteps (B,) original 0..T-1 indices (float), tokens (B, N, cond_width),
        pooled (B, cond_width), low_res (B, C, h, w) for the super-resolution variant, hints (one map
        per entry of ``hint_at``, see :mod:`piti_core.models.hint`)."""
        if self.super_res:
            if low_res is None:
                raise DataError("the upsampler needs a low-resolution image (low_res)")
            up = F.interpolate(low_res.to(x.dtype), x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        if x.shape[1] != self.in_channels:
            raise DataError(f"UNet input has {x.shape[1]} channels, the model expects {self.in_channels}")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.dtype))
        if self.transformer_proj is not None and pooled is not None:
            emb = emb + self.transformer_proj(pooled.to(self.dtype)).to(emb.dtype)
        h = x.to(self.dtype)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        if hints is not None and len(hints) != len(self.hint_at):
            raise DataError(f"the UNet takes {len(self.hint_at)} spatial hints, got {len(hints)}")
        hints = dict(zip(self.hint_at, hints)) if hints else {}
        hs = []
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, tokens)
            if i in hints:
                h = h + hints[i].to(h.dtype)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, tokens)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, tokens)
        return self.out(h).to(x.dtype)
