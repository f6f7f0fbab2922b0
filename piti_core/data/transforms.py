"""Joint geometry for an image and its conditions: crop, resize, flip — the same for every field.

Order of operations for one sample (all fields share the source resolution at step 1):

1. **crop** — ``keep-aspect`` (default): the largest centred square, or a random one along the long
   side when training; ``squash`` (the official PITI code): no crop, the whole picture is resized to a
   square and its aspect ratio is lost.
2. **resize** every field to the *work size*, the largest requested size, as its
   :class:`~piti_core.data.fields.Field` declares: images bicubic with antialiasing; labels, depth,
   normals and their masks nearest; edges with a max-pool when shrinking (a thin edge survives
   downsampling) and nearest when enlarging; a task's own field nearest, bilinear, area or bicubic.
   Only the photo is clamped (to [0, 1]); no other field is clamped unless its Field says so.
3. **augment** jointly with :class:`kornia.augmentation.AugmentationSequential` (image as "input",
   conditions as "mask" so any geometric augmentation uses nearest for them): horizontal flip with
   p = 0.5 in training. A flip mirrors the scene, so the x component of every normal vector (of every
   field declared ``vector=True``) is negated; an in-plane rotation (few-shot training,
   docs/fewshot.md) turns their (x, y) part with it.
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

# how the built-in keys are resampled (a task's own fields say it in their Field.resample)
RESAMPLE = {"image": "bicubic", "labels": "nearest", "edges": "maxpool", "depth": "nearest",
            "depth_valid": "nearest", "normals": "nearest", "normals_valid": "nearest"}
# the only clamp: a photo in [0, 1] (bicubic overshoots at hard edges); other fields keep their values
CLAMP = {"image": (0.0, 1.0)}


def to_tensors(arrays: Mapping[str, np.ndarray], fields: Mapping[str, object] | None = None) -> dict[str, torch.Tensor]:
    """numpy fields from :func:`~piti_core.data.readers.read_sample` -> (C, H, W) tensors.

    "image" is (H, W, 3) uint8 and becomes float in [0, 1]; every other array is (H, W) or (C, H, W):
    int64 arrays of an "int64" field (class ids) stay int64, the rest become float32.
    """
    out = {}
    for key, arr in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if key == "image":
            out[key] = t.permute(2, 0, 1).float() / 255.0
            continue
        if t.ndim == 2:
            t = t[None]
        field = (fields or {}).get(key)
        integer = field.dtype == "int64" if field is not None else key == "labels"
        out[key] = t.long() if integer else t.float()
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


def resize_field(key: str, t: torch.Tensor, size: int, mode: str | None = None,
                 clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Resize one (C, H, W) field to (C, size, size) with its resampling rule (or ``mode``).

    Modes: "nearest"; "maxpool" (max-pool when shrinking, so thin lines survive; nearest when
    enlarging); "bilinear" and "bicubic" (antialiased when shrinking); "area" (area average when
    shrinking, bilinear when enlarging). Values are never clamped, except to ``clamp`` when given
    and for the photo ("image", [0, 1]: bicubic overshoots at hard edges).
    """
    if tuple(t.shape[-2:]) == (size, size):
        return t
    mode = mode or RESAMPLE.get(key.removesuffix("_hr"), "nearest")
    clamp = clamp if clamp is not None else CLAMP.get(key.removesuffix("_hr"))
    x = t[None]
    shrink = size < min(t.shape[-2:])
    if mode in ("bicubic", "bilinear") or (mode == "area" and not shrink):
        mode = "bilinear" if mode == "area" else mode
        out = F.interpolate(x.float(), (size, size), mode=mode, antialias=shrink, align_corners=False)[0]
    elif mode == "area":
        out = F.interpolate(x.float(), (size, size), mode="area")[0]
    elif mode == "maxpool" and shrink:
        return F.adaptive_max_pool2d(x, (size, size))[0]
    else:
        return F.interpolate(x.float(), (size, size), mode="nearest-exact")[0].to(t.dtype)
    return out.clamp(*clamp) if clamp is not None else out


class JointAugment:
    """Apply one :class:`kornia.augmentation.AugmentationSequential` to every field of a sample.

    ``augmentations`` default to a horizontal flip with probability ``p_flip``. The image goes in as
    "input"; the conditions are stacked into one float "mask" (so geometric augmentations resample
    them with nearest, and kornia runs once), then split and cast back. Intensity augmentations
    (colour jitter) touch the image only. "normals" vectors follow the geometry: a flip negates their x
    component, a rotation (``RandomRotation`` / ``RandomAffine``) turns their (x, y) part by the same
    angle, in the order the augmentations ran; so do the keys given in ``vectors`` (the fields declared
    with ``Field(vector=True)``).
    """

    def __init__(self, augmentations=None, p_flip: float = 0.5):
        import kornia.augmentation as K

        augmentations = list(augmentations) if augmentations is not None else [K.RandomHorizontalFlip(p=p_flip)]
        self.with_masks = K.AugmentationSequential(*augmentations, data_keys=["input", "mask"])
        self.image_only = K.AugmentationSequential(*augmentations, data_keys=["input"])

    def __call__(self, fields: dict[str, torch.Tensor], vectors=("normals",)) -> dict[str, torch.Tensor]:
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
        turned = [k for k in vectors if k in out and out[k].shape[0] >= 2]
        m = _normals_matrix(params) if turned else None
        if m is not None:
            for key in turned:
                n = out[key]
                out[key] = torch.cat([torch.einsum("ij,jhw->ihw", m.to(n.dtype), n[:2]), n[2:]])
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
            generator: torch.Generator | None = None, resample: Mapping[str, str] | None = None,
            fields: Mapping[str, object] | None = None, image_cond: bool = False) -> dict[str, torch.Tensor]:
    """Source-resolution numpy fields -> final tensors.

    ``fields`` maps each key to the :class:`~piti_core.data.fields.Field` that fills it (its
    resampling, clamp, dtype, masks and vector components); without it the built-in keys keep their
    rules. ``resample`` overrides the resampling mode of some keys, e.g. {"edges": "nearest"} for
    edges that were derived at the condition size and scaled up onto the photo (max-pooling them back
    would thicken every line). ``image_cond``: also return the photo at the condition size as
    "cond_image" (for a task that encodes from the photo).

    Returns "image" (3, s0, s0) in [-1, 1] (and "image_hr" at ``image_sizes[1]``) and every field at
    S = ``cond_size``: "labels" int64 (S, S), "edges" float {0, 1} (1, S, S), "depth" (1, S, S) metres
    with bool "depth_valid", "normals" (3, S, S) with bool "normals_valid", a task's own field as its
    Field declares.
    """
    by_key = _field_keys(fields)
    tensors = to_tensors(arrays, {k: f for k, (f, main) in by_key.items() if main})
    h, w = tensors["image"].shape[-2:]
    top, left, ch, cw = crop_box(h, w, resize, train, generator)
    work = max(max(image_sizes), cond_size)
    modes = {k: _mode(k, by_key) for k in tensors}
    modes.update(resample or {})
    clamps = {k: by_key[k][0].clamp for k in tensors if k in by_key and by_key[k][1]}
    tensors = {k: resize_field(k, t[:, top:top + ch, left:left + cw], work, modes.get(k), clamps.get(k))
               for k, t in tensors.items()}
    if augment is not None:
        vectors = [k for k, (f, main) in by_key.items() if main and f.vector] if fields is not None else ["normals"]
        tensors = augment(tensors, vectors=tuple(vectors))
    out: dict[str, torch.Tensor] = {}
    image = tensors.pop("image")
    if image_cond:
        out["cond_image"] = resize_field("image", image, cond_size) * 2 - 1
    if len(image_sizes) > 1:
        out["image_hr"] = resize_field("image", image, image_sizes[1]) * 2 - 1
        image = resize_field("image", image, image_sizes[1])
    out["image"] = resize_field("image", image, image_sizes[0]) * 2 - 1
    for key, t in tensors.items():
        out[key] = _finish(key, resize_field(key, t, cond_size, modes.get(key), clamps.get(key)), by_key)
    return out


def _field_keys(fields: Mapping[str, object] | None) -> dict[str, tuple[object, bool]]:
    """key -> (Field, whether it is the field's main array rather than one of its masks)."""
    if fields is None:
        from piti_core.data.fields import BUILTIN

        fields = BUILTIN
    out: dict[str, tuple[object, bool]] = {}
    for f in fields.values():
        out[f.name] = (f, True)
        out.update({m: (f, False) for m in f.masks})
    return out


def _mode(key: str, by_key) -> str | None:
    if key in by_key:
        return by_key[key][0].resampling(key)
    return None


def _finish(key: str, t: torch.Tensor, by_key) -> torch.Tensor:
    """A field at the condition size as the task receives it: masks bool, binary fields {0, 1}, squeezed."""
    field, main = by_key.get(key, (None, True))
    if field is None:
        return t.contiguous()
    if not main:
        return (t > 0.5).contiguous()
    if field.binary:
        t = (t > 0.5).float()
    if field.squeeze:
        t = t[0]
    return t.contiguous()
