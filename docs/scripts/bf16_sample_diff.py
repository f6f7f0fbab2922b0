"""bf16 vs fp32 samples: how far bf16 autocast moves the images (docs/performance.md).

    python docs/scripts/bf16_sample_diff.py RUN [--n 4] [--steps 20] [--upsampler-steps 12] [--out DIR] [--json]

The first N validation conditions of the run's data set are sampled twice with the same seed, once in
fp32 and once under bf16 autocast (``sample_base`` / ``sample_upsampler`` with ``dtype=``, as
``piti sample --dtype bf16`` does), with deterministic DPM-Solver++(2M) for both stages by default so
that the only difference is the arithmetic. Reported for the 8-bit images (0–255, as saved):

* ``base``: the base model's samples, fp32 vs bf16;
* ``upsampler``: the upsampler in bf16 vs fp32 on the SAME fp32 low-res input (the upsampler alone);
* ``cascade``: everything in bf16 vs everything in fp32 (what a user sees);
* ``fp32 seed S vs S+1``: two fp32 cascades with different seeds, the scale of sample-to-sample change.

Each as mean and max absolute difference and PSNR (peak 255). ``--bf16-attention`` runs the attention
as CUDA does (bf16 inputs into the fused kernel, whose softmax is fp32) instead of upcasting them, the
CPU's default. On a CPU without AVX512-BF16/AMX bf16 is
emulated and about 50x slower than fp32: keep N and the steps small. ``--out DIR`` writes grid.png
(condition | fp32 | bf16 | 4x |difference| per row, final images) and bf16_diff.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import attrs
import torch


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean / max absolute difference and PSNR of two [-1, 1] batches after 8-bit quantisation."""
    from piti_core.sampling import to_uint8

    d = (to_uint8(a).float() - to_uint8(b).float()).abs()
    mse = float(d.square().mean())
    return {"mean_abs": round(float(d.mean()), 3), "max_abs": int(d.max()),
            "psnr_db": round(10 * math.log10(255 ** 2 / mse), 2) if mse > 0 else math.inf}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default="dpmpp")
    ap.add_argument("--steps", default="20")
    ap.add_argument("--upsampler-sampler", default="dpmpp")
    ap.add_argument("--upsampler-steps", default="12", help='respacing; "12" is 5 steps at upsampler_start 0.4')
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bf16-attention", action="store_true",
                    help="keep bf16 attention inputs in bf16, as on CUDA (the CPU upcasts them to fp32)")
    args = ap.parse_args(argv)

    from piti_core.models import layers

    if args.bf16_attention:
        layers.LOW_PRECISION_ATTENTION_DEVICES = (*layers.LOW_PRECISION_ATTENTION_DEVICES, args.device)

    from piti_core.plugins import get_plugin_manager
    from piti_core.runs import load_run
    from piti_core.sampling import sample_base, sample_upsampler

    if args.device == "cpu":
        torch.set_num_threads(1)
    host = get_plugin_manager()
    dev = torch.device(args.device)
    run = load_run(args.run, names=["base", "upsampler"], device=dev, extra_sections=host.task_sections())
    task = host.task(run.meta["task"])
    s = attrs.evolve(run.config.sample, sampler=args.sampler, steps=args.steps,
                     upsampler_sampler=args.upsampler_sampler, upsampler_steps=args.upsampler_steps)
    cfg = attrs.evolve(run.config, sample=s)
    ds = task.build_dataset(cfg, "val", image_sizes=(cfg.model.image_size, cfg.upsampler.image_size), train=False)
    cond = torch.stack([ds[i]["cond"] for i in range(min(args.n, len(ds)))]).to(dev)
    null = task.null_condition(cond)
    times: dict[str, float] = {}

    def timed(name, fn):
        print(f"{name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - t0, 1)
        return out

    def gen(seed):
        return torch.Generator(device=dev).manual_seed(seed)

    def cascade(dtype, seed):
        g = gen(seed)
        base = sample_base(run.models["base"], cond, null, cfg, generator=g, dtype=dtype)
        state = g.get_state()  # where the upsampler starts drawing its noise
        return base, sample_upsampler(run.models["upsampler"], base, cond, cfg, generator=g, dtype=dtype), state

    def upsample(low, dtype, state):
        g = gen(0)
        g.set_state(state)  # the same upsampler noise as in the fp32 cascade
        return sample_upsampler(run.models["upsampler"], low, cond, cfg, generator=g, dtype=dtype)

    base32, up32, state = timed("fp32 cascade", lambda: cascade(torch.float32, args.seed))
    base16, up16, _ = timed("bf16 cascade", lambda: cascade(torch.bfloat16, args.seed))
    up16_on32 = timed("bf16 upsampler on the fp32 base", lambda: upsample(base32, torch.bfloat16, state))
    if not torch.equal(upsample(base32, torch.float32, state), up32):
        sys.exit("internal check failed: the fp32 upsampler did not reproduce the cascade's sample")
    _, up32_next, _ = timed("fp32 cascade, next seed", lambda: cascade(torch.float32, args.seed + 1))
    rows = {"base": diff(base32, base16), "upsampler": diff(up32, up16_on32), "cascade": diff(up32, up16),
            f"fp32 seed {args.seed} vs {args.seed + 1}": diff(up32, up32_next)}
    record = {"run": args.run, "n": int(cond.shape[0]), "seed": args.seed, "device": str(dev),
              "bf16_attention": dev.type in layers.LOW_PRECISION_ATTENTION_DEVICES,
              "settings": {k: getattr(s, k) for k in ("sampler", "steps", "upsampler_sampler", "upsampler_steps",
                                                        "upsampler_start", "guidance", "guidance_scale")},
              "sizes": [cfg.model.image_size, cfg.upsampler.image_size], "torch": torch.__version__,
              "differences": rows, "seconds": times}
    if args.out:
        _write(Path(args.out), record, task, cond, cfg, up32, up16)
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print("| compared | mean abs diff (0-255) | max abs diff | PSNR dB |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mean_abs']} | {r['max_abs']} | {r['psnr_db']} |")
    print(f"seconds: {times}")


def _write(out: Path, record, task, cond, cfg, a, b) -> None:
    from piti_core.io import atomic_write_text
    from piti_core.sampling import save_grid

    rows = []
    for i in range(cond.shape[0]):
        x, y = (a[i].float().cpu().clamp(-1, 1) + 1) / 2, (b[i].float().cpu().clamp(-1, 1) + 1) / 2
        rows.append([task.visualize(cond[i].float().cpu(), cfg), x, y, ((x - y).abs() * 4).clamp(0, 1)])
    out.mkdir(parents=True, exist_ok=True)
    save_grid(out / "grid.png", rows)
    atomic_write_text(out / "bf16_diff.json", json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
