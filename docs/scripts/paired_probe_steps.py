"""Each training step against a matmul probe taken just before it (docs/performance.md, the targets).

    python docs/scripts/paired_probe_steps.py --steps 10
    python docs/scripts/paired_probe_steps.py --stage stage1 --steps 6 --preset tiny

The per-step view of what ``piti bench --compare`` reports as "per step" on the CPU: the bench's own
training step (batch 1, fp32, the stage's loss, AdamW, EMA, clipping) timed by the bench's
``_measure`` with a probe before each step, one variant, and every pair printed. The median over the
steps is the bench's ``paired_fraction_of_matmul``.
"""

import argparse

import torch

from piti_core.bench import matmul_rate
from piti_core.bench_compare import _measure, _median, cpu_bench_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--stage", default="stage2", choices=["stage1", "stage2"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    _, trainer, _, flops = cpu_bench_step(args.preset, args.stage)
    print(f"{args.preset} {args.stage}: {flops / 1e9:.1f} GFLOP per step, {torch.get_num_threads()} threads")
    timing = _measure(trainer.train_step, steps=args.steps, warmup=args.warmup, device=cpu,
                      probe=lambda: matmul_rate(cpu, "fp32")[0])
    fractions = []
    for i, pair in enumerate(timing["paired"]):
        probe, step = pair["probe_flops_per_s"], pair["step_s"]
        fractions.append(flops / step / probe)
        print(f"step {i}: probe {probe / 1e9:6.1f} GFLOP/s  step {step:6.3f} s  "
              f"{flops / step / 1e9:6.1f} GFLOP/s  fraction {fractions[-1]:.3f}")
    print(f"fraction of the probe before each step: median {_median(fractions):.3f}, "
          f"range {min(fractions):.3f}–{max(fractions):.3f}")


if __name__ == "__main__":
    main()
