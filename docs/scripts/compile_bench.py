"""Eager vs ``--compile``: sampling speed of the base decoder, a stage-2 training step, and compile time.

    OMP_NUM_THREADS=1 python docs/scripts/compile_bench.py [--preset tiny] [--batch 8] [--steps 20]
        [--part sample|train|both] [--device cpu] [--json]

* ``sample``: the base decoder as a sampler calls it: the condition encoded once, classifier-free
  guidance (one decoder pass on 2 x batch rows per step), a different timestep at every step.
  Reported as sampler steps/s and decoder evaluations/s (rows/s, 2 x batch per step).
* ``train``: stage 2 of the PITI recipe (encoder and decoder trained) through the real
  :class:`~piti_core.train.loop.Trainer` (hybrid loss, AdamW, clipping, EMA) on random in-memory
  pairs of the preset's sizes, ``train.batch_size`` per step. ``--compile`` compiles the encoder and
  the decoder for training; ``--decoder-only`` compiles the decoder alone, to see what the encoder adds.

For each, the eager model and the compiled one (``piti_core.compile.compile_model``, random weights,
same seed) run ``--steps`` timed calls after a first call; ``step_s`` is the median of all timed calls
of all rounds, ``compile_s`` the compiled first call's time minus a steady call's. The compile time
depends on torch's inductor cache
(``$TORCHINDUCTOR_CACHE_DIR``, default /tmp/torchinductor_$USER): point it at an empty folder for a
cold compile, run again for a warm one. Phases alternate eager, compiled, eager, compiled
(``--rounds``), so that a busy neighbour on a shared machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def _models(cfg, device, purpose: str | None, decoder_only: bool = False):
    from piti_core.compile import compile_model
    from piti_core.models.build import build_base

    torch.manual_seed(0)
    model = build_base(cfg, 1).to(device)
    if purpose:
        compile_model(model.decoder if decoder_only else model, device=device, purpose=purpose)
    return model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_sample(cfg, *, batch: int, steps: int, device, compiled: bool) -> dict:
    from piti_core.diffusion import guided

    model = _models(cfg, device, "sample" if compiled else None).eval()
    g = torch.Generator().manual_seed(1)
    size = cfg.model.image_size
    cond = torch.rand(batch, 1, cfg.encoder.cond_size, cfg.encoder.cond_size, generator=g).to(device)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        enc, null = model.encode(cond), model.encode(torch.ones_like(cond[:1]))
        model_fn = guided(lambda xx, tt, c: model.decode_encoded(xx, tt, c).float(), enc, null, 3.0)
        times = []
        for i in range(steps + 1):
            t = torch.full((batch,), float(999 - 37 * i), device=device)
            _sync(device)
            start = time.perf_counter()
            model_fn(x, t)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"first_s": times[0], "times": times[1:]}


def bench_train(cfg, *, steps: int, device, compiled: bool, decoder_only: bool = False) -> dict:
    from piti_core.diffusion.guidance import null_condition
    from piti_core.train.finetune import _named
    from piti_core.train.loop import BatchStream, Trainer
    from piti_core.train.objectives import DiffusionObjective
    from piti_core.train.recipe import piti_stages, select

    stage = select(piti_stages(cfg.train), "stage2")[0]
    model = _models(cfg, device, "train" if compiled else None, decoder_only)
    g = torch.Generator().manual_seed(2)
    size, cs = cfg.model.image_size, cfg.encoder.cond_size
    data = [{"image": torch.rand(3, size, size, generator=g) * 2 - 1, "cond": torch.rand(1, cs, cs, generator=g)}
            for _ in range(4 * cfg.train.batch_size)]
    objective = DiffusionObjective(stage, cfg, null_condition=null_condition)
    groups = [("encoder", _named(model.encoder, "encoder."), stage.lr),
              ("decoder", _named(model.decoder, "decoder."), stage.decoder_lr)]
    trainer = Trainer(model=model, groups=groups, loss_fn=objective, stream=BatchStream(data, cfg.train.batch_size, 0),
                      tcfg=cfg.train, device=torch.device(device), dtype=torch.float32, stage_index=stage.index,
                      aux=objective.aux())
    times = []
    for _ in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        trainer.train_step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"first_s": times[0], "times": times[1:]}


def main(argv=None) -> dict:
    from piti_core.config import resolve_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="images per sampling batch (the decoder sees 2x)")
    ap.add_argument("--steps", type=int, default=20, help="timed calls after the first")
    ap.add_argument("--part", choices=["sample", "train", "both"], default="both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decoder-only", action="store_true", help="train: compile the decoder, not the encoder")
    ap.add_argument("--rounds", type=int, default=2, help="eager, compiled, eager, compiled ... rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = resolve_config(preset=args.preset)
    out = {"preset": args.preset, "device": args.device, "threads": torch.get_num_threads(),
           "decoder_only": args.decoder_only,
           "torch": torch.__version__, "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default")}
    parts = ["sample", "train"] if args.part == "both" else [args.part]
    for part in parts:
        runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name in runs:
                if part == "sample":
                    runs[name].append(bench_sample(cfg, batch=args.batch, steps=args.steps, device=args.device,
                                                   compiled=name == "compiled"))
                else:
                    runs[name].append(bench_train(cfg, steps=args.steps, device=args.device,
                                                  compiled=name == "compiled", decoder_only=args.decoder_only))
        res = {}
        for name, r in runs.items():
            times = sorted(t for row in r for t in row["times"])
            step_s = times[len(times) // 2]
            res[name] = {"step_s": step_s, "min_step_s": times[0], "first_s": [row["first_s"] for row in r]}
            if part == "sample":
                res[name]["decoder_evals_per_s"] = 2 * args.batch / step_s
        # the first compiled call of the first round compiles (later rounds find torch's caches warm)
        res["compile_s"] = runs["compiled"][0]["first_s"] - res["compiled"]["step_s"]
        res["speedup"] = res["eager"]["step_s"] / res["compiled"]["step_s"]
        out[part] = res
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for part in parts:
            r = out[part]
            rate = "decoder_evals_per_s" if part == "sample" else None
            for name in ("eager", "compiled"):
                extra = f"  {r[name][rate]:.1f} decoder evals/s" if rate else ""
                print(f"{part:6s} {name:8s} {1000 * r[name]['step_s']:8.1f} ms/step (median){extra}")
            print(f"{part:6s} speedup  {r['speedup']:.2f}x   compile {r['compile_s']:.1f} s")
    return out


if __name__ == "__main__":
    main()
