"""A real depth map as a depth condition: scikit-image's Middlebury motorcycle disparity.

    python docs/scripts/motorcycle_depth.py [--out docs/depth] [--overwrite]

Turns ``skimage.data.stereo_motorcycle()``'s ground-truth disparity into z-depth in metres with the
pair's calibration (``depth = f * B / (d + doffs)``; unknown disparity -> 0, the "no depth" value),
writes it as a float TIFF — a user's condition file — and runs it through the ``depth`` and
``depth-normal`` tasks' preprocess at the ``glide`` preset's 256×256 condition size. Writes:

* ``motorcycle.png``              the left photo, cropped and resized as the conditions (256×256),
* ``motorcycle_depth.png``        the depth condition (per-image log depth, -1 near / unknown .. +1 far),
* ``motorcycle_normals.png``      the depth-normal task's normals, derived from the same file,

and prints the condition's range and how its values follow the disparity.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DOCS = Path(__file__).resolve().parent.parent / "depth"
# calibration of the 4x downsampled pair (skimage.data.stereo_motorcycle docstring)
FOCAL, BASELINE, DOFFS = 994.978, 0.193001, 31.086


def motorcycle_depth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left photo uint8, disparity, depth in metres with 0 where the disparity is unknown)."""
    from skimage import data

    from piti_core.data.preprocess import depth_from_disparity

    left, _, disp = data.stereo_motorcycle()
    depth = depth_from_disparity(disp, focal=FOCAL, baseline=BASELINE, doffs=DOFFS)
    return left, disp, np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)


def save_float_tiff(path: Path, depth: np.ndarray) -> None:
    Image.fromarray(depth.astype(np.float32), mode="F").save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DOCS)
    ap.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = ap.parse_args()

    from piti_core.config import resolve_config
    from piti_core.io import atomic_write
    from piti_core.plugins import get_plugin_manager
    from piti_plugins.common import fit_condition

    names = ("motorcycle.png", "motorcycle_depth.png", "motorcycle_normals.png")
    existing = [n for n in names if (args.out / n).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{args.out / existing[0]} exists; pass --overwrite to replace it")
    host = get_plugin_manager()
    cfg = resolve_config(preset="glide", extra_sections=host.task_sections())  # 256×256 conditions
    left, disp, depth = motorcycle_depth()
    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "motorcycle_depth.tif"
        save_float_tiff(tif, depth)
        cond = host.task("depth").preprocess(tif, cfg)[0]
        dn = host.task("depth-normal").preprocess(tif, cfg)[0]
    photo = fit_condition(torch.from_numpy(np.array(left)).permute(2, 0, 1).float() / 255, "image", cfg)
    pictures = [photo, host.task("depth").visualize(cond, cfg), host.task("normal").visualize(dn[:3], cfg)]

    args.out.mkdir(parents=True, exist_ok=True)
    for name, pic in zip(names, pictures):
        arr = (pic.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        atomic_write(args.out / name, lambda tmp, a=arr: Image.fromarray(a).save(tmp, format="PNG", optimize=True))
        print(f"{args.out / name}  {(args.out / name).stat().st_size / 1024:.0f} KiB")

    d = fit_condition(torch.from_numpy(disp.astype(np.float32))[None], "depth", cfg)[0].numpy()
    c = cond[0].numpy()
    known = np.isfinite(d)
    order = np.argsort(d[known], kind="stable")
    rising = np.diff(c[known][order])
    print(f"condition {tuple(cond.shape)} in [{c.min():.3f}, {c.max():.3f}], finite: {bool(np.isfinite(c).all())}")
    print(f"known disparity {known.mean():.3f} of the pixels; unknown ones -> {np.unique(c[~known]).tolist()}")
    print(f"larger disparity -> lower (nearer) value at {(rising <= 1e-6).mean():.4f} of consecutive pairs; "
          f"depth {depth[depth > 0].min():.2f} - {depth.max():.2f} m")


if __name__ == "__main__":
    main()
