"""A complete third-party task for piti: colourise a grayscale photo.

The condition is the image's luminance (1 channel in [-1, 1]); the training pairs come from any
data set's images, so it needs no extra annotations. Installed with pip, it appears in
``piti tasks`` / ``piti plugins`` without any change to piti.
"""

from __future__ import annotations

from piti_core.hookspecs import hookimpl
from piti_core.tasks import ConditionSpec, Task

LUMA = (0.299, 0.587, 0.114)


class ColorizeTask(Task):
    name = "colorize"
    description = "grayscale photo -> colour photo"
    sources = ("image",)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=1, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        import torch
        import torch.nn.functional as F

        image = sample["image"]  # (3, H, W) in [-1, 1]
        weights = torch.tensor(LUMA, dtype=image.dtype).view(3, 1, 1)
        grey = (image * weights).sum(0, keepdim=True)
        size = cfg.encoder.cond_size
        if grey.shape[-1] != size:
            grey = F.interpolate(grey[None], size=(size, size), mode="bilinear", antialias=True)[0]
        return grey.clamp(-1, 1)

    def preprocess(self, source, cfg):
        import numpy as np
        import torch
        from PIL import Image

        from piti_core.errors import DataError

        try:
            img = source if isinstance(source, Image.Image) else Image.open(source)
            img = img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"{source}: cannot read image ({exc})") from None
        size = cfg.encoder.cond_size
        img = img.resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        return self.encode({"image": x}, cfg).unsqueeze(0)


@hookimpl
def register_tasks(register):
    register(ColorizeTask())
