"""Attention in a training step: PyTorch's CPU flash kernel against the math path (explicit matmuls + softmax).

    python docs/scripts/attention_backend_ab.py --reps 6
    python docs/scripts/attention_backend_ab.py --preset tiny --reps 4

Runs one training step of the bench's stage-2 model to record the (q, k) shapes of every attention
call, then times forward + backward at those shapes with each ``torch.nn.attention.SDPBackend``, the
two alternated in one process, and prints milliseconds per training step and GFLOP/s (forward 4·L·S·d
per head, backward 2.5× that) next to a matmul probe taken in the same run (docs/performance.md).
"""

import argparse
import collections
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from piti_core.bench import matmul_rate
from piti_core.bench_compare import _median, cpu_bench_step
from piti_core.models import layers, transformer, unet

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def attention_seconds(shapes: list, backend: SDPBackend) -> float:
    """Forward + backward of attention at each recorded (q, k) shape, in seconds."""
    total = 0.0
    for q_shape, k_shape in shapes:
        q = torch.randn(q_shape, requires_grad=True)
        k = torch.randn(k_shape, requires_grad=True)
        v = torch.randn(k_shape, requires_grad=True)
        g = torch.randn(q_shape)
        start = time.perf_counter()
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).backward(g)
        total += time.perf_counter() - start
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    _, trainer, _, _ = cpu_bench_step(args.preset)
    shapes = []
    original = layers.attention

    def recording(q, k, v, is_causal=False):
        shapes.append((tuple(q.shape), tuple(k.shape)))
        return original(q, k, v, is_causal=is_causal)

    callers = (unet, transformer)  # the UNet's attention blocks and the encoder's transformer import it
    for module in callers:
        module.attention = recording
    try:
        trainer.train_step()
    finally:
        for module in callers:
            module.attention = original
    flops = sum(4 * q[0] * q[1] * q[2] * k[2] * q[3] * 3.5 for q, k in shapes)  # forward + 2.5× backward
    counts = collections.Counter(shapes)
    print(f"{args.preset}: {len(shapes)} attention calls per step, {flops / 1e9:.1f} GFLOP forward + backward")
    for (q, k), n in counts.most_common():
        print(f"  {n:3d}× q {q}  k {k}")
    times = {name: [] for name in BACKENDS}
    for name, backend in BACKENDS.items():  # one untimed pass each
        attention_seconds(shapes, backend)
    for rep in range(args.reps):
        order = list(BACKENDS.items()) if rep % 2 == 0 else list(BACKENDS.items())[::-1]
        for name, backend in order:
            times[name].append(attention_seconds(shapes, backend))
    probe = matmul_rate(torch.device("cpu"), "fp32")[0]
    print(f"2048² fp32 matmul probe: {probe / 1e9:.1f} GFLOP/s")
    for name, ts in times.items():
        t = _median(ts)
        print(f"  {name:6s} {t * 1e3:7.1f} ms per step (median of {len(ts)})  {flops / t / 1e9:6.1f} GFLOP/s  "
              f"{flops / t / probe:.2f} of the probe")


if __name__ == "__main__":
    main()
