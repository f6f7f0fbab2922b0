"""Per-shape A/B of a 3×3 conv's weight gradient on the CPU: oneDNN against ``layers.conv3x3_weight_grad``.

    python docs/scripts/conv_weight_grad_ab.py --reps 7
    python docs/scripts/conv_weight_grad_ab.py --reps 7 --shapes 4,192,192,64 8,128,128,16

Each shape is ``batch,in_channels,out_channels,size`` (square maps); the default list is every 3×3
conv shape of the glide base at batch 1. The two are alternated in a rotating order in one process,
each checked against the other first, and the median milliseconds and GFLOP/s (2·O·C·9·N·H·W per
weight gradient) are printed, with the sum over the shapes. Both are timed in the weight's layout, as
the gradient lands in ``.grad`` (autograd copies a gradient in another layout).
"""

import argparse
import time

import torch

from piti_core.models.layers import conv3x3_weight_grad

GLIDE_BATCH1 = ["1,192,192,64", "1,384,192,64", "1,576,192,64", "1,384,384,64", "1,384,384,32", "1,576,384,32",
                "1,768,384,32", "1,960,384,32", "1,576,576,32", "1,576,576,16", "1,1152,576,16", "1,1344,576,16",
                "1,512,512,16", "1,768,768,16"]


def onednn(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                               1, [False, True, False])[1]


def nine_matmuls(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # in the weight's layout, as the gradient lands in .grad (autograd copies a gradient in another layout)
    return conv3x3_weight_grad(x, grad_out).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--shapes", nargs="*", default=GLIDE_BATCH1)
    args = ap.parse_args()
    fns = [onednn, nine_matmuls]
    total = dict.fromkeys((f.__name__ for f in fns), 0.0)
    print(f"{torch.get_num_threads()} threads, {args.reps} alternations, median ms (GFLOP/s)")
    for spec in args.shapes:
        n, cin, cout, size = map(int, spec.split(","))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, cin, size, size, generator=g)
        weight = torch.randn(cout, cin, 3, 3, generator=g)
        grad_out = torch.randn(n, cout, size, size, generator=g)
        torch.testing.assert_close(nine_matmuls(x, grad_out, weight), onednn(x, grad_out, weight),
                                   rtol=1e-3, atol=1e-3 * float(onednn(x, grad_out, weight).abs().max()))
        times: dict[str, list[float]] = {f.__name__: [] for f in fns}
        for rep in range(args.reps):
            for fn in fns[rep % 2:] + fns[:rep % 2]:
                start = time.perf_counter()
                fn(x, grad_out, weight)
                times[fn.__name__].append(time.perf_counter() - start)
        flops = 2 * cout * cin * 9 * n * size * size
        medians = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        for k, v in medians.items():
            total[k] += v
        a, b = medians["onednn"], medians["nine_matmuls"]
        print(f"{n} x {cin:>4} -> {cout:>4} at {size:>3}²   oneDNN {a * 1e3:7.1f} ({flops / a / 1e9:4.0f})   "
              f"nine matmuls {b * 1e3:7.1f} ({flops / b / 1e9:4.0f})   ratio {b / a:.2f}", flush=True)
    print(f"sum   oneDNN {total['onednn'] * 1e3:.0f} ms   nine matmuls {total['nine_matmuls'] * 1e3:.0f} ms   "
          f"ratio {total['nine_matmuls'] / total['onednn']:.2f}")


if __name__ == "__main__":
    main()
