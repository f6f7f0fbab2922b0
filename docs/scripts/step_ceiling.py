"""How close the training step's compute kernels alone come to the matmul probe (docs/performance.md).

    python docs/scripts/step_ceiling.py --steps 6
    python docs/scripts/step_ceiling.py --stage stage1 --steps 4 --preset tiny

The stage-2 target asks the whole step for >= 80 % of the 2048² matmul rate. This script asks how
much of that the step could reach at all with piti's current kernels: each step runs right after a
matmul probe, under ``torch.profiler``, and its time is split into the compute kernels (matmuls,
oneDNN convolutions forward and backward, flash attention forward and backward) and everything else
(AdamW, EMA, the gradient norm, dropout, GroupNorm, SiLU, copies, and the time between operators). The step's FLOPs (the
bench's count) over the compute kernels' time alone is the fraction the step would reach if
everything else took no time: its ceiling. The rest is printed by operator.
"""

import argparse
import collections
import time

import torch
from torch.profiler import ProfilerActivity, profile

from piti_core.bench import matmul_rate
from piti_core.bench_compare import _median, cpu_bench_step

COMPUTE = ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward",
           "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--stage", default="stage2", choices=["stage1", "stage2"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=8, help="how many of the other operators to list")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    _, trainer, _, flops = cpu_bench_step(args.preset, args.stage)
    print(f"{args.preset} {args.stage}: {flops / 1e9:.1f} GFLOP per step, {torch.get_num_threads()} threads")
    for _ in range(args.warmup):
        trainer.train_step()
    whole, ceiling, others = [], [], collections.Counter()
    for i in range(args.steps):
        probe = matmul_rate(cpu, "fp32")[0]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            trainer.train_step()
            total = time.perf_counter() - start
        averages = prof.key_averages()
        compute = sum(e.self_cpu_time_total for e in averages if e.key in COMPUTE) / 1e6
        for e in averages:
            if e.key not in COMPUTE:
                others[e.key] += e.self_cpu_time_total / 1e6 / args.steps
        others["(outside any operator)"] += (total - sum(e.self_cpu_time_total for e in averages) / 1e6) / args.steps
        whole.append(flops / total / probe)
        ceiling.append(flops / compute / probe)
        print(f"step {i}: probe {probe / 1e9:6.1f} GFLOP/s  step {total:6.3f} s  compute kernels "
              f"{compute:6.3f} s  other {total - compute:5.3f} s  fraction {whole[-1]:.3f}  ceiling {ceiling[-1]:.3f}")
    print(f"medians: fraction of the probe {_median(whole):.3f}, ceiling (compute kernels only) "
          f"{_median(ceiling):.3f}")
    print("other operators, seconds per step:")
    for name, seconds in others.most_common(args.top):
        print(f"  {name:60s} {seconds:6.3f}")


if __name__ == "__main__":
    main()
