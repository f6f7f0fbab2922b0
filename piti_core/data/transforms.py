"""Joint geometry for an image and its conditions: crop, resize, flip — the same for every field.

Order of operations for one sample (all fields share the source resolution at step 1):

1. **crop** — ``keep-aspect`` (default): the largest centred square, or a random one along the long
   side when training; ``squash`` (the official PITI code): no crop, the whole picture is resized to a
   square and its aspect ratio is lost.
2. **resize** every field to the *work size*, the largest requested size: images bicubic with
   antialiasing; labels, depth, normals and their masks nearest; edges with a max-pool when shrinking
   (a thin edge survives downsampling) and nearest when enlarging.
3. **augment** jointly with :class:`kornia.augmentation.AugmentationSequential` (image as "input",
   conditions as "mask" so any geometric augmentation uses nearest for them): horizontal flip with
   p = 0.5 in training. A flip mirrors the scene, so the x component of every normal vector is negated;
   an in-plane rotation (few-shot training, docs/fewshot.md) turns the (x, y) part of the normals with it.
4. **shrink** each field from the work size to its own size (the image of a two-size request is
   downsampled from the large one, as the official two-step 256 -> 64 resize).

Why keep-aspect by default: squashing a 4:3 ADE20K / COCO photo to a square stretches every object by
a third, the model then learns stretched shapes, and normal vectors no longer match the squashed
surfaces. Random crops also add augmentation. Choose ``squash`` to match the official preprocessing.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

# how each field is resampled
RESAMPLE = {"image": "bicubic", "labels": "nearest", "edges": "maxpool", "depth": "nearest",
            "depth_valid": "nearest", "normals": "nearest", "normals_valid": "nearest"}


def to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy fields from :func:`~piti_core.data.readers.read_sample` -> (C, H, W) tensors."""
    out = {}
    for key, arr in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if key == "image":
            t = t.permute(2, 0, 1).float() / 255.0
        elif key == "normals":
            t = t.permute(2, 0, 1).float()
        elif key == "labels":
            t = t.long()[None]
        else:  # edges, depth, masks
            t = t.float()[None]
        out[key] = t
    return out


def crop_box(height: int, width: int, resize: str = "keep-aspect", train: bool = False,
             generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the region that becomes the square output."""
    if resize == "squash":
        return 0, 0, height, width
    side = min(height, width)
    if train:
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
    else:
        top, left = (height - side) // 2, (width - side) // 2
    return top, left, side, side


def resize_field(key: str, t: torch.Tensor, size: int, mode: str | None = None) -> torch.Tensor:
    """Resize one (C, H, W) field to (C, size, size) with its resampling rule (or ``mode``)."""
    if tuple(t.shape[-2:]) == (size, size):
        return t
    mode = mode or RESAMPLE.get(key.removesuffix("_hr"), "nearest")
    x = t[None]
    if mode == "bicubic":
        return F.interpolate(x, (size, size), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    if mode == "maxpool" and size < min(t.shape[-2:]):
        return F.adaptive_max_pool2d(x, (size, size))[0]
    return F.interpolate(x.float(), (size, size), mode="nearest-exact")[0].to(t.dtype)


class JointAugment:
    """Apply one :class:`kornia.augmentation.AugmentationSequential` to every field of a sample.

    ``augmentations`` default to a horizontal flip with probability ``p_flip``. The image goes in as
    "input"; the conditions are stacked into one float "mask" (so geometric augmentations resample
    them with nearest, and kornia runs once), then split and cast back. Intensity augmentations
    (colour jitter) touch the image only. "normals" vectors follow the geometry: a flip negates their x
    component, a rotation (``RandomRotation`` / ``RandomAffine``) turns their (x, y) part by the same
    angle, in the order the augmentations ran.
    """

    def __init__(self, augmentations=None, p_flip: float = 0.5):
        import kornia.augmentation as K

        augmentations = list(augmentations) if augmentations is not None else [K.RandomHorizontalFlip(p=p_flip)]
        self.with_masks = K.AugmentationSequential(*augmentations, data_keys=["input", "mask"])
        self.image_only = K.AugmentationSequential(*augmentations, data_keys=["input"])

    def __call__(self, fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = fields["image"][None]
        others = [k for k in fields if k != "image"]
        seq = self.with_masks if others else self.image_only
        params = seq.forward_parameters(image.shape)
        if others:
            masks = torch.cat([fields[k].float() for k in others])[None]
            image, masks = seq(image, masks, params=params)
            parts = masks[0].split([fields[k].shape[0] for k in others])
        else:
            image, parts = seq(image, params=params), []
        out = {"image": image[0]}
        out.update({k: p.to(fields[k].dtype) for k, p in zip(others, parts)})
        if "normals" in out:
            m = _normals_matrix(params)
            if m is not None:
                n = out["normals"]
                out["normals"] = torch.cat([torch.einsum("ij,jhw->ihw", m.to(n.dtype), n[:2]), n[2:]])
        return out


def _normals_matrix(params) -> torch.Tensor | None:
    """The 2×2 map of the normals' (x right, y up) components for the augmentations that fired in
    ``params`` (in order), or None when none changes them."""
    import math

    m, changed = torch.eye(2, dtype=torch.float64), False
    for p in params:
        data = p.data if isinstance(p.data, dict) else {}
        if not data or not bool(data["batch_prob"].flatten()[0] > 0.5):
            continue
        if p.name.startswith("RandomHorizontalFlip"):
            step = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        elif p.name.startswith("RandomVerticalFlip"):
            step = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
        elif p.name.startswith(("RandomRotation", "RandomAffine")):
            # kornia turns the picture counter-clockwise for RandomRotation's positive "degrees" and
            # clockwise for RandomAffine's positive "angle" (checked by tests/train/test_fewshot.py)
            deg = float(data["degrees"].flatten()[0]) if "degrees" in data else -float(data["angle"].flatten()[0])
            a = math.radians(deg)
            step = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        else:
            continue
        m, changed = step @ m, True
    return m.float() if changed else None


def prepare(arrays: Mapping[str, np.ndarray], *, image_sizes: tuple[int, ...], cond_size: int,
            resize: str = "keep-aspect", train: bool = False, augment: JointAugment | None = None,
            generator: torch.Generator | None = None, resample: Mapping[str, str] | None = None
            ) -> dict[str, torch.Tensor]:
    """Source-resolution numpy fields -> final tensors.

    ``resample`` overrides the resampling mode of some fields, e.g. {"edges": "nearest"} for edges
    that were derived at the condition size and scaled up onto the photo (max-pooling them back
    would thicken every line).

    Returns "image" (3, s0, s0) in [-1, 1] (and "image_hr" at ``image_sizes[1]``), "labels" int64
    (S, S), "edges" float {0, 1} (1, S, S), "depth" (1, S, S) metres with bool "depth_valid",
    "normals" (3, S, S) with bool "normals_valid", where S = ``cond_size``.
    """
    fields = to_tensors(arrays)
    h, w = fields["image"].shape[-2:]
    top, left, ch, cw = crop_box(h, w, resize, train, generator)
    work = max(max(image_sizes), cond_size)
    modes = dict(resample or {})
    fields = {k: resize_field(k, t[:, top:top + ch, left:left + cw], work, modes.get(k))
              for k, t in fields.items()}
    if augment is not None:
        fields = augment(fields)
    out: dict[str, torch.Tensor] = {}
    image = fields.pop("image")
    if len(image_sizes) > 1:
        out["image_hr"] = resize_field("image", image, image_sizes[1]) * 2 - 1
        image = resize_field("image", image, image_sizes[1])
    out["image"] = resize_field("image", image, image_sizes[0]) * 2 - 1
    for key, t in fields.items():
        t = resize_field(key, t, cond_size, modes.get(key))
        if key == "labels":
            t = t[0]
        elif key.endswith("_valid"):
            t = t > 0.5
        elif key == "edges":
            t = (t > 0.5).float()
        out[key] = t.contiguous()
    return out
