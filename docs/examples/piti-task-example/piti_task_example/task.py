"""The ``colorize`` task: grayscale photo -> colour photo.

The condition is the photo's luminance, one channel in [-1, 1]. It is computed from the data set's
own images, so the task needs no annotations: any folder of photos (and the built-in toy world)
trains it. The luma weights are a task option: ``--set colorize.luma=bt709``.
"""

from __future__ import annotations

from pathlib import Path

from attrs import field, frozen

from piti_core.tasks import ConditionSpec, Task

# R, G, B weights of the luminance (each set sums to 1, so a grey pixel keeps its value)
LUMA_WEIGHTS = {
    "bt601": (0.299, 0.587, 0.114),  # JPEG, PIL's convert("L")
    "bt709": (0.2126, 0.7152, 0.0722),  # HDTV / sRGB primaries
    "mean": (1 / 3, 1 / 3, 1 / 3),
}


def _one_of(choices):
    """An attrs validator whose error is one sentence (piti shows it as "bad value in [colorize]: ...")."""

    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")

    return check


@frozen
class ColorizeOptions:
    """The ``[colorize]`` config section (``--set colorize.luma=bt709``)."""

    luma: str = field(default="bt601", validator=_one_of(tuple(LUMA_WEIGHTS)))


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


def _resize(x, size: int):
    """``(B, C, H, W)`` -> ``(B, C, size, size)``, bicubic with antialiasing (values may overshoot a little)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


class ColorizeTask(Task):
    name = "colorize"
    description = "grayscale photo -> colour photo (luminance condition)"
    sources = ("image",)  # the condition comes from the photo itself
    config_class = ColorizeOptions

    def condition_spec(self, cfg) -> ConditionSpec:
        return ConditionSpec(channels=1, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        """``sample["image"]`` (3, H, W) in [-1, 1], at the model's size -> luminance (1, S, S)."""
        grey = luminance(sample["image"][None].float(), self.options(cfg).luma)
        return _resize(grey, cfg.encoder.cond_size)[0].clamp(-1, 1)

    def preprocess(self, source, cfg):
        """A photo (colour or grey; path or PIL image) -> condition batch (1, 1, S, S).

        The file is read by piti's data-set reader (same checks, one-line DataError naming the file)
        and cropped / resized with the data set's policy (``data.resize``), so a user's photo looks
        like a training condition.
        """
        import numpy as np
        import torch
        from PIL import Image

        from piti_core.data.readers import read_image
        from piti_core.data.transforms import crop_box, resize_field

        if isinstance(source, Image.Image):
            rgb = np.array(source.convert("RGB"), dtype=np.uint8)
        else:
            rgb = read_image(Path(source))
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0  # (3, H, W) in [0, 1]
        top, left, h, w = crop_box(x.shape[-2], x.shape[-1], cfg.data.resize)
        x = resize_field("image", x[:, top:top + h, left:left + w], cfg.encoder.cond_size)
        return self.encode({"image": x * 2 - 1}, cfg).unsqueeze(0)

    def alignment(self, samples, batch, cfg):
        """Do the samples keep the input's luminance, and are they coloured at all?

        ``luma_psnr`` (dB, higher is better): PSNR between each sample's luminance and its condition
        (resized to the sample's size). ``colourfulness`` (0 for grey): a grey copy of the input
        would score a perfect ``luma_psnr``, so read both.
        """
        import torch

        grey = luminance(samples.float().clamp(-1, 1), self.options(cfg).luma)
        cond = _resize(batch["cond"].to(grey), grey.shape[-1]).clamp(-1, 1)
        mse = ((grey - cond) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnr = 10 * torch.log10(4.0 / mse)  # peak-to-peak 2 for values in [-1, 1]
        return {"luma_psnr": float(psnr.mean()), "colourfulness": float(colourfulness(samples).mean())}
