"""A/B of one of ``layers.Conv2d``'s CPU paths for 3×3 convs, in one process.

    python docs/scripts/small_conv_ab.py --preset glide --batch-size 1 --reps 6
    python docs/scripts/small_conv_ab.py --path shift --preset glide --batch-size 1 --reps 6

Alternates, in a rotating order, the base model's full stage-2 training step (objective, AdamW, EMA:
what ``piti bench --compare`` times) and one guided sampling step (2 rows) with the path off and on
(the default), and prints the median seconds of each and their ratio. ``--path unfold`` (default): the
unfold + matmul convolution of small maps, off = ``UNFOLD_MAX_PIXELS=0``. ``--path shift``: the
nine-matmul weight gradient, off = ``SHIFT_GRAD=False`` (training only, so the sampling step is
the control). Alternating inside one process keeps a shared machine's swings on both sides.
"""

import argparse
import time

import torch

import piti_core.models.layers as layers
from piti_core.bench import _inputs
from piti_core.bench_compare import bench_trainer
from piti_core.config import resolve_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--path", choices=("unfold", "shift"), default="unfold")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    switch = {"unfold": "UNFOLD_MAX_PIXELS", "shift": "SHIFT_GRAD"}[args.path]
    default = getattr(layers, switch)
    cfg = resolve_config(preset=args.preset)
    trainer, model, _ = bench_trainer(cfg, "stage2", device="cpu", batch_size=args.batch_size)
    inputs = _inputs(cfg, cfg.model, 2, 3, torch.device("cpu"))

    def sample_step():
        model.eval()
        with torch.no_grad():
            model.decode_encoded(inputs["x_t"], inputs["timesteps"], model.encode(inputs["cond"]), None)
        model.train()

    trainer.train_step()
    sample_step()  # warm-up of both paths' first allocations
    times: dict[tuple[str, int], list[float]] = {}
    settings = [type(default)(0), default]
    for rep in range(args.reps):
        for limit in (settings if rep % 2 == 0 else settings[::-1]):
            setattr(layers, switch, limit)
            for name, fn in (("train", trainer.train_step), ("sample", sample_step)):
                start = time.perf_counter()
                fn()
                times.setdefault((name, limit), []).append(time.perf_counter() - start)
    setattr(layers, switch, default)
    print(f"{args.preset} batch {args.batch_size}, {torch.get_num_threads()} threads, {args.reps} alternations, "
          f"path {args.path}")
    for name in ("train", "sample"):
        off, on = (sorted(times[(name, x)])[args.reps // 2] for x in settings)
        print(f"{name:<7} {args.path} off {off:8.3f} s   {args.path} on {on:8.3f} s   "
              f"ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
