"""The gradient norm and clipping of a training step, old against new (docs/performance.md).

    python docs/scripts/clip_norm_ab.py --reps 8
    python docs/scripts/clip_norm_ab.py --preset tiny --reps 4

Runs two training steps of the bench's stage-2 model to get real gradients, then times, alternated
in one process (a 256 MB pass between calls evicts the gradients from the cache, as the passes of a
real step do):
- the total norm: ``_foreach_norm`` against ``loop.total_grad_norm`` (one BLAS dot per large tensor);
- a clipped optimizer step: scaling every gradient (``_foreach_mul_``) and then the fused AdamW step,
  against the fused step dividing by ``grad_scale`` as it reads each gradient.
"""

import argparse
import time

import torch

from piti_core.bench_compare import _median, cpu_bench_step
from piti_core.train.loop import total_grad_norm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    _, trainer, model, _ = cpu_bench_step(args.preset)
    trainer.train_step()
    trainer.train_step()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt, coef = trainer.opt, 0.999
    print(f"{args.preset}: {len(grads)} gradients, {sum(g.numel() for g in grads) / 1e6:.1f} M values")

    def foreach_norm():
        torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def scale_then_step():
        torch._foreach_mul_(grads, coef)
        opt.step()

    def step_with_grad_scale():
        opt.grad_scale = torch.tensor(1.0 / coef)
        opt.step()
        opt.grad_scale = None

    cases = {"norm: _foreach_norm": foreach_norm,
             "norm: total_grad_norm (dots, large ones)": lambda: total_grad_norm(grads),
             "clipped step: scale, then fused AdamW": scale_then_step,
             "clipped step: fused AdamW with grad_scale": step_with_grad_scale}
    flush = torch.empty(64 << 20)
    times = {name: [] for name in cases}
    for rep in range(args.reps):
        for name in (list(cases) if rep % 2 == 0 else list(cases)[::-1]):
            flush.add_(1.0)
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:44s} median {_median(values) * 1e3:6.1f} ms  ({', '.join(f'{v * 1e3:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
