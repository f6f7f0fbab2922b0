"""Each training step against a matmul probe taken just before it (docs/performance.md, the targets).

    python docs/scripts/paired_probe_steps.py --steps 10
    python docs/scripts/paired_probe_steps.py --stage stage1 --steps 6 --preset tiny

``piti bench --compare`` divides a variant's FLOP rate by the median of the run's 2048² matmul probes.
On a shared machine a probe that lands in a slow moment pulls that median down and flatters every
fraction. Here a probe (as the bench takes it) is timed right before each of ``--steps`` full training
steps of the base model (batch 1, fp32, the stage's loss, AdamW, EMA, clipping: the bench's step), and
each step's FLOP rate is divided by its own probe. Printed per step, then the median and range.
"""

import argparse
import time

import torch

from piti_core.bench import matmul_rate
from piti_core.bench_compare import _median, _stage, bench_trainer, meta_flops
from piti_core.config import resolve_config
from piti_core.host_memory import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--stage", default="stage2", choices=["stage1", "stage2"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    keep_freed_memory()  # as piti train and the bench run on the CPU
    cfg = resolve_config(preset=args.preset)
    stage = _stage(cfg, args.stage)
    flops = meta_flops(cfg, "base", stage, 1, 3)[0]
    trainer = bench_trainer(cfg, args.stage, device="cpu")[0]
    for _ in range(args.warmup):
        trainer.train_step()
    fractions = []
    print(f"{args.preset} {args.stage}: {flops / 1e9:.1f} GFLOP per step, {torch.get_num_threads()} threads")
    for i in range(args.steps):
        probe, size = matmul_rate(torch.device("cpu"), "fp32")
        start = time.perf_counter()
        trainer.train_step()
        step = time.perf_counter() - start
        fractions.append(flops / step / probe)
        print(f"step {i}: probe {probe / 1e9:6.1f} GFLOP/s ({size}²)  step {step:6.3f} s  "
              f"{flops / step / 1e9:6.1f} GFLOP/s  fraction {fractions[-1]:.3f}", flush=True)
    print(f"fraction of the probe before each step: median {_median(fractions):.3f}, "
          f"range {min(fractions):.3f}–{max(fractions):.3f}")


if __name__ == "__main__":
    main()
