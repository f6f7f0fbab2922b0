"""Dropout's cost in a training step: ``nn.Dropout``'s ``bernoulli_`` mask against ``layers.Dropout``'s.

    python docs/scripts/dropout_ab.py --reps 8
    python docs/scripts/dropout_ab.py --preset tiny --reps 4

Runs one training step of the bench's stage-2 model to record the input shape of every dropout
layer, then times dropout forward + backward at those shapes, the two masks alternated in one process
(``layers.FAST_DROPOUT``), and prints the milliseconds per training step of each (docs/performance.md).
"""

import argparse
import time

import torch

from piti_core.bench_compare import _median, cpu_bench_step
from piti_core.models import layers


def dropout_seconds(shapes: list, p: float) -> float:
    """Forward + backward of one dropout layer at each shape, in seconds."""
    layer = layers.Dropout(p).train()
    total = 0.0
    for shape in shapes:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        start = time.perf_counter()
        layer(x).backward(g)
        total += time.perf_counter() - start
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    cfg, trainer, model, _ = cpu_bench_step(args.preset)
    shapes, p = [], cfg.model.dropout
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
             for m in model.modules() if isinstance(m, layers.Dropout)]
    trainer.train_step()
    for hook in hooks:
        hook.remove()
    elements = sum(torch.Size(s).numel() for s in shapes)
    print(f"{args.preset}: {len(shapes)} dropout calls per step (p = {p}), {elements / 1e6:.1f} M elements")
    if not shapes or p == 0:
        print("no dropout in this preset's training step")
        return
    times = {False: [], True: []}
    for rep in range(args.reps):
        for fast in ((False, True) if rep % 2 == 0 else (True, False)):
            layers.FAST_DROPOUT = fast
            times[fast].append(dropout_seconds(shapes, p))
    layers.FAST_DROPOUT = True
    for fast, name in ((False, "nn.Dropout (bernoulli_)"), (True, "layers.Dropout (16-bit slices)")):
        print(f"{name:32s} median {_median(times[fast]) * 1e3:6.1f} ms per step  "
              f"({', '.join(f'{t * 1e3:.0f}' for t in times[fast])})")
    print(f"ratio {_median(times[True]) / _median(times[False]):.3f}")


if __name__ == "__main__":
    main()
