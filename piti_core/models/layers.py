"""Small building blocks shared by the UNet and the transformers.

Numerics follow the official GLIDE/PITI code: normalisations run in float32 and cast back, attention
softmax runs in float32 (scale 1/sqrt(d)), the timestep embedding is ``[cos | sin]``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")

try:  # torch >= 2.4 takes the device type; older versions have a CPU-specific function
    torch.is_autocast_enabled("cpu")

    def _cpu_autocast() -> bool:
        return torch.is_autocast_enabled("cpu")
except TypeError:  # pragma: no cover - torch < 2.4
    _cpu_autocast = torch.is_autocast_cpu_enabled


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (weights too) and cast back; optional fused SiLU after it."""

    def __init__(self, num_channels: int, swish: bool = False, num_groups: int = 32, eps: float = 1e-5):
        super().__init__(num_groups=min(num_groups, num_channels), num_channels=num_channels, eps=eps)
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        y = y.to(x.dtype)
        return F.silu(y) if self.swish else y


FAST_DROPOUT = True  # CPU training draws dropout masks as below (False: nn.Dropout's bernoulli_ everywhere)
DROPOUT_LEVELS = 1 << 16  # the mask compares 16-bit random integers: p is rounded to a multiple of 1/65536


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn faster in CPU training.

    On the CPU, ``nn.Dropout`` fills a float tensor with ``bernoulli_``, about 12 ns per element on the
    development machine: 120 ms of the glide base's stage-2 step at batch 1 (36 dropout layers). Here
    one 64-bit random integer, drawn over its full range, gives four independent 16-bit values; an
    element is kept where its value falls in the lowest ``k`` of the 65,536, ``k = round((1 - p) ·
    65536)``, and kept elements are scaled by ``65536 / k``, so the output's expectation is the input
    exactly (the drop probability is ``p`` to within 1/131,072). Same generator, same seeding: a
    seeded step draws the same mask every time. Elsewhere (CUDA, whose fused kernel already draws
    cheaply; eval mode; ``p`` of 0 or 1; torch.compile) it is ``nn.Dropout``. Same state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (FAST_DROPOUT and self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu"
                and x.is_floating_point() and not torch.compiler.is_compiling()):
            noise = dropout_noise(x, self.p)
            return x.mul_(noise) if self.inplace else x * noise
        return super().forward(x)


def dropout_noise(x: torch.Tensor, p: float) -> torch.Tensor:
    """The multiplier of :class:`Dropout`: 0 where dropped, ``65536 / k`` where kept, shaped like ``x``."""
    keep = min(max(round((1.0 - p) * DROPOUT_LEVELS), 1), DROPOUT_LEVELS - 1)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(1 << 63), (1 << 63) - 1)  # the full range: random_() alone leaves the top bit 0
    kept = words.view(torch.int16)[:n] < keep - DROPOUT_LEVELS // 2
    return kept.to(x.dtype).mul_(DROPOUT_LEVELS / keep).view_as(x)


UNFOLD_MAX_PIXELS = 64  # batch × height × width: one 8×8 map
UNFOLD_MIN_CHANNELS = 512
SHIFT_GRAD = True  # the nine-matmul weight gradient in CPU training (False: oneDNN's everywhere)
SHIFT_GRAD_MIN_CHANNELS = 128  # in and out, one image
SHIFT_GRAD_BATCH_MIN_CHANNELS = 192  # in and out, a batch of images ...
SHIFT_GRAD_BATCH_MAX_PIXELS = 4096  # ... of at most this many pixels in all (batch × height × width)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs a 3×3, stride-1 convolution of a
    single small, wide feature map on the CPU as unfold + matmul: batch × height × width at most
    :data:`UNFOLD_MAX_PIXELS` (one 8×8 map, the lowest level of the glide base at batch 1) and at least
    :data:`UNFOLD_MIN_CHANNELS` input channels.

    There oneDNN's direct convolution is slow: a 1536→768 conv at 8×8 ran at 12–17 GFLOP/s inside the
    glide base's batch-1 training step against 150 for a plain matmul, and the 8×8 level took a quarter
    of the step (docs/performance.md, "Small feature maps"). As a matmul of the (C·9, H·W) patch matrix
    the same work is about 4× faster, and autograd's backward is two more matmuls and a fold. With
    larger batches or fewer channels oneDNN was as fast or faster (measured), so everywhere else (and on
    CUDA, under torch.compile, and under CPU autocast, where the conv runs in bf16 and its gradients must
    too) it is ``F.conv2d``.

    In training on the CPU, the other 3×3 stride-1 convs run forward and input gradient through oneDNN
    but compute the weight gradient as nine matmuls (:func:`conv3x3_weight_grad`), where that measured
    faster: one image with at least :data:`SHIFT_GRAD_MIN_CHANNELS` channels in and out, or a batch of
    at most :data:`SHIFT_GRAD_BATCH_MAX_PIXELS` pixels with at least
    :data:`SHIFT_GRAD_BATCH_MIN_CHANNELS`. At the glide base's sizes oneDNN's weight gradient ran at
    52–128 GFLOP/s, varying from run to run, the matmuls at 79–149 (docs/performance.md).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # what a layer's shape decides, once: the per-call tests below are then one attribute for most layers
        self._unfoldable = (self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                            and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # piti's own paths: 3×3 stride-1 fp32 convs on the CPU in eager mode; everything else is F.conv2d.
        # Under CPU autocast the inputs are still fp32 but F.conv2d runs in bf16: the nine-matmul gradient
        # would meet a bf16 grad_out (oneDNN refuses the mixed dtypes), so autocast takes F.conv2d too.
        if (self._unfoldable and x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not torch.compiler.is_compiling()
                and not _cpu_autocast()):
            n, _, h, w = x.shape
            if self.in_channels >= UNFOLD_MIN_CHANNELS and n * h * w <= UNFOLD_MAX_PIXELS:
                return conv3x3_unfold(x, self.weight, self.bias)
            if (SHIFT_GRAD and self.weight.requires_grad and torch.is_grad_enabled()
                    and _shift_grad_pays(n * h * w, n, min(self.in_channels, self.out_channels))):
                return _Conv3x3ShiftGrad.apply(x, self.weight, self.bias)
        return super().forward(x)


def conv3x3_unfold(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 3×3, stride-1, padding-1 convolution as ``weight (O, C·9) @ unfold(x) (N, C·9, H·W)``."""
    n, _, h, w = x.shape
    cols = F.unfold(x, 3, padding=1)
    out = torch.matmul(weight.reshape(weight.shape[0], -1), cols)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(n, weight.shape[0], h, w)


def _shift_grad_pays(pixels: int, batch: int, channels: int) -> bool:
    """Where :func:`conv3x3_weight_grad` measured faster than oneDNN (docs/performance.md)."""
    if batch == 1:
        return channels >= SHIFT_GRAD_MIN_CHANNELS
    return channels >= SHIFT_GRAD_BATCH_MIN_CHANNELS and pixels <= SHIFT_GRAD_BATCH_MAX_PIXELS


class _Conv3x3ShiftGrad(torch.autograd.Function):
    """``F.conv2d`` (3×3, stride 1, padding 1) whose weight gradient is :func:`conv3x3_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv3x3_weight_grad(x, grad_out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def conv3x3_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The weight gradient (O, C, 3, 3) of a 3×3, stride-1, padding-1 convolution, as nine matmuls.

    ``x`` (N, C, H, W) is copied once onto a zero-padded grid of (H+2)·(W+2) positions, and ``grad_out``
    onto the same grid. Kernel tap (i, j) then reads the positions of ``x`` shifted by ``i·(W+2) + j``:
    a strided view, no im2col copy. ``grad_out`` is zero on the padding, so a shift never mixes rows or
    images. One image keeps the channels-first layout (the matmul reads ``x`` transposed); a batch is
    laid out channels-last (with room for the largest shift) so each tap is one matmul. The nine taps
    are then reordered into the weight's layout, a copy of 9·O·C values. Where one image's map has
    fewer pixels than ``grad_out`` has channels, the (C·9, H·W) patch matrix of ``F.unfold`` is the
    smaller copy, and one matmul against it gives the weight's layout directly.
    """
    n, c, h, w = x.shape
    o = grad_out.shape[1]
    if n == 1 and h * w < o:
        # A small map: the (C·9, H·W) patch matrix is smaller than the (9, O, C) taps, whose reordering
        # into the weight's (O, C, 3, 3) layout cost up to half the matmuls' time (576 channels at 16²).
        # One matmul against the patch matrix gives that layout directly.
        return torch.mm(grad_out[0].reshape(o, h * w), F.unfold(x, 3, padding=1)[0].t()).view(o, c, 3, 3)
    hp, wp = h + 2, w + 2
    grid = n * hp * wp
    taps = grad_out.new_empty(9, o, c)
    if n == 1:
        # Positions past h·(W+2) − 2 are padding of grad_out, so each channel's shifted reads stay
        # inside its own padded map and both copies are one F.pad each.
        used = h * wp - 2
        xp = F.pad(x[0], (1, 1, 1, 1)).reshape(c, grid)
        g = F.pad(grad_out[0], (0, 2)).reshape(o, h * wp)[:, :used]
        for k in range(9):
            shift = (k // 3) * wp + k % 3
            torch.mm(g, xp[:, shift:shift + used].t(), out=taps[k])
    else:
        xp = x.new_zeros(grid + 2 * wp + 2, c)
        xp[:grid].view(n, hp, wp, c)[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
        gp = grad_out.new_zeros(n, hp, wp, o)
        gp[:, :h, :w].copy_(grad_out.permute(0, 2, 3, 1))
        g = gp.view(grid, o).t()
        for k in range(9):
            shift = (k // 3) * wp + k % 3
            torch.mm(g, xp[shift:shift + grid], out=taps[k])
    return taps.permute(1, 2, 0).reshape(o, c, 3, 3)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` (the official zero-initialised output convolutions)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of (possibly fractional) timesteps, shape (B, dim), float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# Where bf16/fp16 attention inputs stay in their dtype (see attention). On the CPU they are upcast: on an
# AMX Xeon the bf16 flash kernel measured no faster than float32 (docs/performance.md, 2026-11-27).
LOW_PRECISION_ATTENTION_DEVICES = ("cuda",)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """Multi-head attention on (B, H, L, d) tensors, scale 1/sqrt(d), softmax in float32; the result
    has ``q``'s dtype.

    On CUDA, bf16/fp16 inputs stay in their dtype: the fused kernels (flash and memory-efficient
    attention) accumulate the scores and keep the softmax's running max and sum in float32, and round
    only the probabilities for the product with ``v``. That is the official code's mixed precision
    (half-precision scores, float32 softmax, half-precision product) with the scores accumulated in
    float32 as well, and it made the glide base's bf16 training step 1.24× faster on an H200 than
    upcasting. Elsewhere (:data:`LOW_PRECISION_ATTENTION_DEVICES`) the inputs are upcast to float32,
    so the whole product is float32. Autocast is off inside: ``q``'s dtype decides.
    """
    dtype = q.dtype
    device_type = q.device.type
    guard = (torch.autocast(device_type, enabled=False) if device_type in _AUTOCAST_DEVICES
             else contextlib.nullcontext())
    with guard:
        if dtype in (torch.bfloat16, torch.float16) and device_type in LOW_PRECISION_ATTENTION_DEVICES:
            return F.scaled_dot_product_attention(q, k.to(dtype), v.to(dtype), is_causal=is_causal)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=is_causal)
    return out.to(dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
