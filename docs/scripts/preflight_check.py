"""The memory preflight's estimate against the measured peak of real training steps (docs/memory.md).

    python docs/scripts/preflight_check.py --preset tiny --stage stage1 [--batch-size N] [--set KEY=VALUE ...]
        [--device cuda]

Builds the stage exactly as ``piti train`` does (``build_stage``: the stage's model, its frozen and
trained parameters, its objective) on random weights and random inputs of the data set's shapes
(no toy-world rendering, no prior), runs ``--steps`` optimizer steps of the Trainer (AdamW, EMA,
accumulation, autocast, fused AdamW) on the CPU and measures the process's peak resident memory over them
(``/proc/self/status`` VmHWM, reset first); with ``--device cuda``, on the GPU, against the CUDA
allocator's peak (``torch.cuda.max_memory_allocated``). The estimate is the one ``piti train --dry-run --json``
prints for the same preset, stage and overrides, run first in a separate process as a user would;
the script prints both, their ratio, and the ratio of the parts above each process's baseline.
"""

import argparse
import json
import subprocess
import sys
import time

import attrs
import torch

from piti_core.bench import PeakMemory
from piti_core.config import resolve_config
from piti_core.plugins import get_plugin_manager
from piti_core.precision import resolve_dtype
from piti_core.train.finetune import build_stage, finetune_stages
from piti_core.train.loop import BatchStream, Trainer, step_seed
from piti_core.train.preflight import process_rss


class RandomPairs(torch.utils.data.Dataset):
    """``n`` seeded random (image, condition) pairs of the data set's shapes and value range."""

    def __init__(self, n: int, size: int, cond_shape: tuple, value_range: tuple):
        self.n, self.size, self.cond_shape, self.range = n, size, cond_shape, value_range

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        lo, hi = self.range
        return {"image": torch.rand(3, self.size, self.size, generator=g) * 2 - 1,
                "cond": lo + (hi - lo) * torch.rand(self.cond_shape, generator=g), "stem": str(i)}


def measure(cfg, task, stage, steps: int, device: str = "cpu") -> dict:
    dev = torch.device(device)
    dtype = resolve_dtype(cfg.train.dtype, dev)
    spec = task.condition_spec(cfg)
    size = (cfg.upsampler if stage.model.endswith("upsampler") else cfg.model).image_size
    cs = cfg.encoder.cond_size
    n = max(4 * cfg.train.batch_size * cfg.train.grad_accum, 16)
    datasets = {(size, False): RandomPairs(n, size, (spec.channels, cs, cs), tuple(spec.value_range))}
    stage = attrs.evolve(stage, encoder_init=None)  # no earlier stage to start from: random encoder
    build = build_stage(stage, cfg, task=task, run_dir=None, prior=None, device=dev, datasets=datasets)
    torch.manual_seed(step_seed(cfg.train.seed, stage.index, 2**31))
    model, groups, objective, dataset, frozen = build()
    stream = BatchStream(dataset, cfg.train.batch_size, cfg.train.seed + stage.index)
    trainer = Trainer(model=model, groups=groups, loss_fn=objective, stream=stream, tcfg=cfg.train, device=dev,
                      dtype=dtype, stage_index=stage.index, aux=objective.aux(), frozen=tuple(frozen))
    peaks, times = [], []
    with PeakMemory(dev) as whole:
        for _ in range(steps):
            t0 = time.perf_counter()
            with PeakMemory(dev) as mem:
                trainer.train_step()
            peaks.append(mem.peak)
            times.append(time.perf_counter() - t0)
    return {"peak": max(peaks + [whole.peak]), "step_peaks": peaks, "step_seconds": times, "dtype": str(dtype),
            "memory_scope": whole.scope, "threads": torch.get_num_threads()}


def dry_run(args, batch_size: int) -> dict:
    """``piti train --dry-run --json`` for the same preset, stage and overrides, in a fresh process.

    ``--no-preview``: this script measures training steps, not the preview grids written between them."""
    cmd = [sys.executable, "-m", "piti_cli.main", "train", "--task", args.task, "--preset", args.preset,
           "--stage", args.stage, "--device", args.device, "--no-preview", "--dry-run", "--json",
           "--set", f"train.batch_size={batch_size}"]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {**json.loads(out.stdout), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--stage", default="stage1", choices=["stage1", "stage1-cont", "stage2", "upsampler"])
    ap.add_argument("--task", default="sketch")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps measured (the 2nd has AdamW state)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    host = get_plugin_manager()
    overrides = [*args.overrides] + ([f"train.batch_size={args.batch_size}"] if args.batch_size else [])
    cfg = resolve_config(preset=args.preset, overrides=overrides, extra_sections=host.task_sections())
    task = host.task(args.task)
    stage = finetune_stages(cfg, args.stage)[0]
    pre = dry_run(args, cfg.train.batch_size)  # a separate process, as a user runs it
    baseline = process_rss()  # this process before any model exists
    measured = measure(cfg, task, stage, args.steps, args.device)
    row = pre["stages"][0]
    result = {"preset": args.preset, "stage": args.stage, "device": args.device, "batch_size": cfg.train.batch_size,
              "overrides": args.overrides, "baseline": baseline, "measured": measured, "estimate": row,
              "estimate_seconds": pre["seconds"], "ratio": row["peak"] / measured["peak"],
              # the model's part: both peaks less the dry-run's baseline (python, torch, what a step loads)
              "ratio_model_part": (row["peak"] - row["baseline"]) / (measured["peak"] - row["baseline"])}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mib = 2**20
    print(f"{args.preset} {args.stage} batch {cfg.train.batch_size} {' '.join(args.overrides)} "
          f"({measured['dtype']}, {measured['threads']} threads, {args.steps} steps)")
    print("estimate: " + "  ".join(f"{k} {row[k] / mib:,.1f}" for k in (
        "baseline", "weights", "grads", "optimizer", "ema", "activations", "transient", "extra", "peak")) + " MiB")
    per_step = [round(p / mib) for p in measured["step_peaks"]]
    seconds = sum(measured["step_seconds"])
    print(f"measured peak {measured['peak'] / mib:,.1f} MiB (per step {per_step}, {seconds:.1f} s)")
    print(f"measured baseline (this process before the model) {baseline / mib:,.1f} MiB; dry-run took "
          f"{pre['seconds']:.1f} s")
    print(f"estimate / measured = {result['ratio']:.3f}   model part (less the estimate's baseline): "
          f"{result['ratio_model_part']:.3f}")


if __name__ == "__main__":
    main()
