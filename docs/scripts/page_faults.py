"""Page faults and kernel time of CPU training steps, with and without piti's malloc tuning.

    python docs/scripts/page_faults.py --rounds 3                 # alternate PITI_MALLOC_TUNING=0 / 1
    python docs/scripts/page_faults.py --child --preset tiny      # one process, the current setting

Each child builds the preset's base model, runs one untimed stage-2 step and ``--steps`` timed ones
(``Trainer.train_step``, a fixed random batch as in ``piti bench --compare``) and prints, per step,
the wall time, minor page faults and kernel (system) time from ``getrusage``, then the median step and
the peak RSS. The parent runs the children one after another, alternating the setting, so the
machine's swings fall on both sides (docs/performance.md, "Freed memory kept between steps").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def child(preset: str, steps: int, batch_size: int) -> None:
    import resource
    import time

    import torch

    from piti_core.bench_compare import _Batches, _stage
    from piti_core.config import resolve_config
    from piti_core.host_memory import keep_freed_memory
    from piti_core.models.build import build_base
    from piti_core.train.loop import Trainer
    from piti_core.train.objectives import DiffusionObjective
    from piti_core.train.recipe import stage_parameters

    cfg = resolve_config(preset=preset)
    torch.manual_seed(0)
    model = build_base(cfg, 3)
    stage = _stage(cfg, "stage2")
    groups, frozen = stage_parameters(model, stage)
    size, cond = cfg.model.image_size, cfg.encoder.cond_size
    batch = {"image": torch.rand(batch_size, 3, size, size) * 2 - 1,
             "cond": torch.rand(batch_size, 3, cond, cond) * 2 - 1}
    objective = DiffusionObjective(stage, cfg, null_condition=torch.ones_like)
    trainer = Trainer(model=model, groups=groups, loss_fn=objective, stream=_Batches(batch), tcfg=cfg.train,
                      device=torch.device("cpu"), dtype=torch.float32, aux=objective.aux(), frozen=tuple(frozen))
    trainer.train_step()
    times = []
    for _ in range(steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        trainer.train_step()
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        times.append(dt)
        faults, kernel = r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime
        print(f"  step {dt:.3f} s  minor faults {faults}  kernel {kernel:.2f} s", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"  tuned {keep_freed_memory()}  median step {sorted(times)[len(times) // 2]:.3f} s  peak RSS {rss:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help="run the steps in this process, with the current setting")
    args = ap.parse_args()
    if args.child:
        child(args.preset, args.steps, args.batch_size)
        return
    for r in range(1, args.rounds + 1):
        for setting in ("0", "1"):
            print(f"round {r}: PITI_MALLOC_TUNING={setting}", flush=True)
            subprocess.run([sys.executable, __file__, "--child", "--preset", args.preset, "--steps", str(args.steps),
                            "--batch-size", str(args.batch_size)], env={**os.environ, "PITI_MALLOC_TUNING": setting},
                           check=True)


if __name__ == "__main__":
    main()
