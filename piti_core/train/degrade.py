"""Low-res inputs for the upsampler: a BSRGAN-light random degradation, or a plain bicubic downscale.

The official PITI upsampler is trained on ``low_res = degradation_bsrgan_variant(hr, sf=4)``
(``degradation/bsrgan_light.py``, spec §6). :func:`degrade` reproduces that pipeline per sample,
with kornia doing the filtering, resizing and JPEG coding (antialiased resizes use torch's
``interpolate(antialias=True)``, see :func:`_resize`):

1. with p=0.25 (only when the scale factor ``sf`` is 4 or another even factor >= 4), a ×½
   pre-downscale (random bilinear / bicubic / area, or an antialiased "MATLAB" bicubic), after
   which ``sf`` is halved;
2. then, in a random order (the final resize always after the random resize):

   - **blur** (p=0.8): half the time an anisotropic Gaussian (size 5–14, random angle, variances
     ``U(0, wd2)`` with the 4× reduced width ``wd2 = (4+sf)/4``), else an isotropic one (size 5–7,
     σ ``U(0, wd)``, ``wd = (2+0.2·sf)/4``); mirror padding. Optionally (``motion_blur_p``, off by
     default) a kornia motion blur instead — not in the official code;
   - **random resize** (p=0.8: scale ``1/U(1, 2·sf)`` with random bilinear / bicubic / area,
     no antialiasing like cv2; else a 25-tap Gaussian σ ``U(0.1, 0.6·sf)`` shifted by
     ``(sf−1)/2`` px, then nearest subsampling by ``sf``);
   - **final resize** to exactly the low-res size (random bilinear / bicubic / area);
   - **Gaussian noise**, always: level ``{1, 2}/255`` (the official ``randint(1, 2)``), colour
     (p=0.4), gray (p=0.4) or channel-correlated with covariance ``|(2/255)²·UᵀDU|`` (p=0.2);
   - **JPEG** (p=0.5) with integer quality ``U{80..95}`` (kornia's differentiable JPEG codec;
     within ~1.4/255 mean absolute difference of libjpeg on a photo).

3. clamp and quantise to uint8 levels (``quantize="round"`` like the official uint8 training
   input; ``"truncate"`` like the inference path, ``(127.5·(x+1)).int()``; ``"none"``).

**Deliberately not copied: L0 smoothing.** The official pipeline also applies L0 gradient
smoothing with p=0.2, but ``l0_smooth`` is written for uint8 input and receives floats in [0, 1]
(``S = float32(img)/256`` ... ``(S*256).astype(uint8)``), so every time it fires the image turns
(almost) black: about 20% of the official low-res training inputs have a mean below 10/255. We
leave the step out; ``tests/train/test_degrade.py`` checks that no draw is black.

Randomness: every random number is drawn with ``torch`` from ``generator`` (a CPU
:class:`torch.Generator`) or, when it is None, from the global torch RNG — the trainer re-seeds
that every step, so a step's degradation is reproducible. No ``random``/``numpy`` RNG is used, and
kornia is only called through its deterministic functional ops. Noise is drawn on the CPU and moved
to the images' device, so results do not depend on the device's RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d, motion_blur
from kornia.geometry.transform import resize

from piti_core.errors import ConfigError

KINDS = ("bsrgan", "bicubic")
QUANTIZE = ("round", "truncate", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "area")  # cv2 INTER_LINEAR / INTER_CUBIC / INTER_AREA


@dataclass(frozen=True)
class BSRGANLight:
    """Probabilities and ranges of the BSRGAN-light pipeline (defaults = official values)."""

    prescale_p: float = 0.25  # ×½ pre-downscale (only for even sf >= 4)
    blur_p: float = 0.8
    motion_blur_p: float = 0.0  # share of the blur draws that use a motion blur (extra; 0 = official)
    resize_p: float = 0.8  # random resize, else shifted Gaussian + nearest subsampling
    noise_levels: tuple[int, int] = (1, 2)  # integer noise level range, in 1/255 units
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (80, 95)


# ----------------------------------------------------------------------------------- random draws
def _u(g: torch.Generator | None, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive, like Python's random.randint)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _choice(g: torch.Generator | None, seq):
    return seq[_randint(g, 0, len(seq) - 1)]


# ------------------------------------------------------------------------------------- kernels
def gaussian_kernel(size: int, cov: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Normalised (size, size) Gaussian kernel with 2×2 covariance ``cov`` (x, y order).

    Sample positions follow BSRGAN's ``gm_blur_kernel`` (centre ``size/2 + 0.5``, so even sizes are
    symmetric about a half pixel); ``shift`` moves the peak up-left by that many pixels, like
    BSRGAN's ``shift_pixel``. kornia's Gaussian kernels are axis-aligned and odd-sized only,
    hence this small helper; the filtering itself is kornia's :func:`~kornia.filters.filter2d`.
    """
    c = torch.arange(size, dtype=torch.float64) - (size / 2.0 - 0.5) + shift
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pos = torch.stack([xx, yy], dim=-1)  # (size, size, 2)
    evals, evecs = torch.linalg.eigh(cov.to(torch.float64))
    inv = evecs @ torch.diag(1.0 / evals.clamp_min(1e-4)) @ evecs.T  # guard near-singular draws
    logk = -0.5 * torch.einsum("...i,ij,...j->...", pos, inv, pos)
    k = torch.exp(logk - logk.max())  # stable for tiny widths (an even kernel has no centre tap)
    return (k / k.sum()).float()


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    border = "reflect" if min(x.shape[-2:]) > kernel.shape[-1] // 2 else "replicate"
    return filter2d(x, kernel[None].to(x), border_type=border)


# ------------------------------------------------------------------------------------------ steps
def _resize(x: torch.Tensor, hw: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """cv2-like resize (no antialiasing), or with ``antialias`` a PIL/MATLAB-style antialiased one.

    kornia's ``antialias`` is a Gaussian pre-blur, not the widened-kernel resampling of PIL and
    MATLAB ``imresize``, so the antialiased case uses torch's ``interpolate(antialias=True)``.
    """
    hw = (max(1, int(hw[0])), max(1, int(hw[1])))
    if antialias:
        return F.interpolate(x, size=hw, mode=mode, align_corners=False, antialias=True).clamp(0, 1)
    align = None if mode == "area" else False
    return resize(x, hw, interpolation=mode, align_corners=align).clamp(0, 1)


def _blur(x: torch.Tensor, sf: int, o: BSRGANLight, g) -> torch.Tensor:
    if o.motion_blur_p > 0 and _u(g) < o.motion_blur_p:
        ksize = _choice(g, (5, 7, 9))
        return motion_blur(x, ksize, _u(g, 0.0, 360.0), _u(g, -1.0, 1.0), border_type="reflect").clamp(0, 1)
    wd2, wd = (4.0 + sf) / 4.0, (2.0 + 0.2 * sf) / 4.0
    if _u(g) < 0.5:  # anisotropic: variances l1, l2 along a random direction
        l1, l2 = wd2 * _u(g), wd2 * _u(g)
        size, theta = _randint(g, 2, 11) + 3, math.pi * _u(g)
        v = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
        basis = torch.stack([v, torch.stack([v[1], -v[0]])])  # rows: v and its normal
        cov = basis.T @ torch.diag(torch.tensor([l1, l2], dtype=torch.float64)) @ basis
    else:  # isotropic (MATLAB fspecial)
        size, sigma = _randint(g, 2, 4) + 3, wd * _u(g)
        cov = torch.eye(2, dtype=torch.float64) * sigma**2
    return _filter(x, gaussian_kernel(size, cov)).clamp(0, 1)


def _random_resize(x: torch.Tensor, sf: int, o: BSRGANLight, g) -> torch.Tensor:
    h, w = x.shape[-2:]
    if _u(g) < o.resize_p:
        s = _u(g, 1.0, 2.0 * sf)
        return _resize(x, (h / s, w / s), _choice(g, INTERPOLATIONS))
    sigma = _u(g, 0.1, 0.6 * sf)
    k = gaussian_kernel(25, torch.eye(2, dtype=torch.float64) * sigma**2, shift=(sf - 1) * 0.5)
    return _filter(x, k)[..., ::sf, ::sf].clamp(0, 1)


def _noise(x: torch.Tensor, o: BSRGANLight, g) -> torch.Tensor:
    _, c, h, w = x.shape
    level = _randint(g, *o.noise_levels) / 255.0
    r = _u(g)
    if r > 0.6:  # colour
        n = torch.randn(1, c, h, w, generator=g) * level
    elif r < 0.4:  # gray
        n = torch.randn(1, 1, h, w, generator=g).expand(1, c, h, w) * level
    else:  # channel-correlated, covariance |L² UᵀDU| with L the top level (as the official code)
        big = o.noise_levels[1] / 255.0
        d = torch.diag(torch.rand(3, generator=g, dtype=torch.float64))
        u, _ = torch.linalg.qr(torch.rand(3, 3, generator=g, dtype=torch.float64))
        cov = (big**2 * u.T @ d @ u).abs()
        evals, evecs = torch.linalg.eigh(cov)  # |.| may break PSD: clamp, like numpy's SVD sampling
        a = evecs @ torch.diag(evals.clamp_min(0).sqrt())
        z = torch.randn(3, h * w, generator=g, dtype=torch.float64)
        n = (a @ z).float().reshape(1, 3, h, w)
    return (x + n.to(x)).clamp(0, 1)


def _jpeg(x: torch.Tensor, o: BSRGANLight, g) -> torch.Tensor:
    if _u(g) >= o.jpeg_p:
        return x
    q = float(_randint(g, *o.jpeg_quality))
    x = torch.round(x * 255.0) / 255.0  # the official code encodes a uint8 image
    return jpeg_codec_differentiable(x, torch.tensor([q], device=x.device, dtype=x.dtype)).clamp(0, 1)


def _bsrgan_one(x: torch.Tensor, size: tuple[int, int], sf: int, o: BSRGANLight, g) -> torch.Tensor:
    """One image (1, 3, H, W) in [0, 1] -> (1, 3, *size) in [0, 1]."""
    if sf >= 4 and sf % 2 == 0 and _u(g) < o.prescale_p:
        half = (x.shape[-2] // 2, x.shape[-1] // 2)
        if _u(g) < 0.5:
            x = _resize(x, half, _choice(g, INTERPOLATIONS))
        else:  # MATLAB imresize: antialiased bicubic
            x = _resize(x, half, "bicubic", antialias=True)
        sf //= 2
    order = [int(i) for i in torch.randperm(5, generator=g)]  # 0 blur 1 resize 2 final 3 noise 4 jpeg
    i1, i2 = order.index(1), order.index(2)
    if i1 > i2:  # the final resize always comes after the random one
        order[i1], order[i2] = order[i2], order[i1]
    for step in order:
        if step == 0 and _u(g) < o.blur_p:
            x = _blur(x, sf, o, g)
        elif step == 1:
            x = _random_resize(x, sf, o, g)
        elif step == 2:
            x = _resize(x, size, _choice(g, INTERPOLATIONS))
        elif step == 3:
            x = _noise(x, o, g)
        elif step == 4:
            x = _jpeg(x, o, g)
    return x


# ------------------------------------------------------------------------------------- public API
def quantize(x01: torch.Tensor, mode: str = "round") -> torch.Tensor:
    """Snap images in [0, 1] to uint8 levels: ``round`` (uint8 files), ``truncate`` (inference), ``none``."""
    if mode == "none":
        return x01
    if mode == "round":
        return torch.round(x01 * 255.0) / 255.0
    if mode == "truncate":
        return torch.floor(x01 * 255.0) / 255.0  # == (127.5·(x+1)).int()/127.5 − 1 for x in [-1, 1]
    raise ConfigError(f"unknown quantize mode '{mode}'; choose one of {', '.join(QUANTIZE)}")


def _low_size(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


@torch.no_grad()
def degrade(images: torch.Tensor, size: int | tuple[int, int], kind: str = "bsrgan", *,
            generator: torch.Generator | None = None, quantize_mode: str = "round",
            options: BSRGANLight | None = None) -> torch.Tensor:
    """Degrade HR images (B, 3, H, W) in [-1, 1] to low-res (B, 3, h, w) in [-1, 1].

    ``kind="bsrgan"``: the BSRGAN-light pipeline above, drawn independently per sample; H/h and
    W/w must be the same integer. ``kind="bicubic"``: a plain antialiased bicubic downscale
    (deterministic; what the prior is pretrained with). ``generator``: a CPU generator, or None for
    the global torch RNG.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown degradation '{kind}' (train.degradation); choose one of {', '.join(KINDS)}")
    if quantize_mode not in QUANTIZE:
        raise ConfigError(f"unknown quantize mode '{quantize_mode}'; choose one of {', '.join(QUANTIZE)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"degrade expects images (B, 3, H, W), got {tuple(images.shape)}")
    h, w = _low_size(size)
    x01 = ((images.float() + 1.0) / 2.0).clamp(0, 1)
    if kind == "bicubic":
        out = _resize(x01, (h, w), "bicubic", antialias=True)
    else:
        H, W = images.shape[-2:]
        sf = H // h
        if H % h or W % w or W // w != sf or sf < 1:
            raise ConfigError(
                f"BSRGAN degradation needs an integer scale factor: {H}x{W} -> {h}x{w} is not one; "
                "make upsampler.image_size a multiple of upsampler.super_res"
            )
        o = options or BSRGANLight()
        out = torch.cat([_bsrgan_one(x01[i: i + 1], (h, w), sf, o, generator) for i in range(images.shape[0])])
    return (quantize(out, quantize_mode) * 2.0 - 1.0).to(images.dtype)
