"""The ``colorize`` task: grayscale photo (and optional colour hints) -> colour photo.

The condition has five channels in [-1, 1]: the photo's luminance, then the hints (their RGB where a
hint is, 0 elsewhere) and a 0/1 hint mask. Any folder of photos trains it (the built-in toy world
too): the luminance comes from the photo, the hints from ``hints/<stem>.json`` files or, without that
folder, from the photo itself (see ``hints.py``). Its options are the ``[tasks.colorize]`` section:
``--set tasks.colorize.luma=bt709``.
"""

from __future__ import annotations

from pathlib import Path

from attrs import field, frozen

from piti_core.contract import IMAGE, ConditionSpec, DataError, Task, fit_field, is_pil, load_rgb

from .hints import HINTS, hints_file

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# R, G, B weights of the luminance (each set sums to 1, so a grey pixel keeps its value)
LUMA_WEIGHTS = {
    "bt601": (0.299, 0.587, 0.114),  # JPEG, PIL's convert("L")
    "bt709": (0.2126, 0.7152, 0.0722),  # HDTV / sRGB primaries
    "mean": (1 / 3, 1 / 3, 1 / 3),
}


def _one_of(choices):
    """An attrs validator whose error is one sentence (piti shows it as a one-line config error)."""

    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _positive(instance, attribute, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


@frozen
class ColorizeOptions:
    """The ``[tasks.colorize]`` config section (``--set tasks.colorize.grid=2``), saved in a run's config.json."""

    luma: str = field(default="bt601", validator=_one_of(tuple(LUMA_WEIGHTS)))
    channels: int = field(default=32, validator=_positive)  # the encoder's convolution width
    grid: int = field(default=4, validator=_positive)  # the encoder's tokens: a grid x grid average pool


def luminance(images, luma: str = "bt601"):
    """RGB ``(B, 3, H, W)`` in [-1, 1] -> luminance ``(B, 1, H, W)`` in [-1, 1]."""
    import torch

    w = torch.tensor(LUMA_WEIGHTS[luma], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def colourfulness(images):
    """Hasler & Süsstrunk's colourfulness of RGB ``(B, 3, H, W)`` in [-1, 1], on a [0, 1] scale; 0 for grey."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    spread = (rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False)).sqrt()
    mean = (rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()
    return spread + 0.3 * mean


class ColorizeTask(Task):
    name = "colorize"
    description = "grayscale photo + colour hints -> colour photo"
    fields = (IMAGE, HINTS)  # encode() gets the photo and the hints at the condition size
    config_class = ColorizeOptions
    alignment_directions = {"luma_psnr": "higher"}  # colourfulness has no better side

    def condition_spec(self, cfg) -> ConditionSpec:
        return ConditionSpec(channels=5, value_range=(-1.0, 1.0))

    def build_encoder(self, cfg, decoder=None):
        """Not the PITI transformer: :class:`~.encoder.ConvTokenEncoder`, sized by ``[tasks.colorize]``."""
        from .encoder import ConvTokenEncoder

        opts = self.options(cfg)
        return ConvTokenEncoder(5, cfg.encoder.width, opts.channels, opts.grid)

    def encode(self, sample, cfg):
        """``image`` (3, S, S) in [-1, 1] and ``hints`` (4, S, S) -> condition (5, S, S)."""
        import torch

        grey = luminance(sample["image"][None].float(), self.options(cfg).luma)[0].clamp(-1, 1)
        hints = sample["hints"].float()
        mask = hints[3:] > 0
        colour = (hints[:3] / hints[3:].clamp_min(1e-6)).clamp(0, 1) * 2 - 1  # un-premultiply
        return torch.cat([grey, torch.where(mask, colour, torch.zeros_like(colour)), mask.float()])

    def preprocess(self, source, cfg):
        """A photo (path or PIL image; colour or grey) and its hints file, if any -> condition (1, 5, S, S).

        The photo is read and checked like a data-set image; its hints come from ``hints/<stem>.json``
        beside it (or in the data set's ``hints/`` folder); without one the model colours freely.
        """
        import numpy as np
        import torch

        photo = torch.from_numpy(np.ascontiguousarray(load_rgb(source))).permute(2, 0, 1).float() / 255
        hints = torch.zeros(4, *photo.shape[-2:])
        path = None if is_pil(source) else hints_file(Path(source))
        if path is not None:
            hints = torch.from_numpy(HINTS.load(path)["hints"])
            if hints.shape[-2:] != photo.shape[-2:]:
                raise DataError(f"{path}: hints for a {hints.shape[-1]}x{hints.shape[-2]} photo, but the photo is "
                                f"{photo.shape[-1]}x{photo.shape[-2]}; fix its width and height")
        sample = {"image": fit_field(IMAGE, photo, cfg) * 2 - 1, "hints": fit_field(HINTS, hints, cfg)}
        return self.encode(sample, cfg)[None]

    def input_suffixes(self, cfg):
        """The photos ``piti sample --input DIR`` takes (their hints files are found by ``preprocess``)."""
        return PHOTO_SUFFIXES

    def input_kind(self, cfg):
        """The demo asks for a photo to colourise."""
        return "upload"

    def visualize(self, cond, cfg):
        """The luminance in grey with the hints in their colours."""
        import torch

        grey = ((cond[:1] + 1) / 2).expand(3, -1, -1)
        return torch.where(cond[4:5] > 0, (cond[1:4] + 1) / 2, grey).clamp(0, 1)

    def alignment(self, samples, batch, cfg):
        """``luma_psnr`` (dB): does each sample keep its input's luminance; ``colourfulness`` (0 for grey):
        is it coloured at all (a grey copy of the input has a perfect ``luma_psnr``, so read both)."""
        import torch
        import torch.nn.functional as F

        grey = luminance(samples.float().clamp(-1, 1), self.options(cfg).luma)
        cond = batch["cond"][:, :1].to(grey)
        if cond.shape[-1] != grey.shape[-1]:
            cond = F.interpolate(cond, size=grey.shape[-2:], mode="bicubic", antialias=True).clamp(-1, 1)
        mse = ((grey - cond) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnr = 10 * torch.log10(4.0 / mse)  # peak-to-peak 2 for values in [-1, 1]
        return {"luma_psnr": float(psnr.mean()), "colourfulness": float(colourfulness(samples).mean())}
