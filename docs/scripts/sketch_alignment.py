"""Do finetuned samples follow their sketches better than the prior's unconditional samples?

    python docs/scripts/sketch_alignment.py RUN_DIR [--n 16] [--steps 50] [--scale 1.3]

Samples the run's base model on the first N validation sketches of its data set (the toy world by
default) and the prior's base model with the empty caption (unconditional) with the same seed, and
prints the sketch task's alignment metrics (edge F1, Chamfer) of both against the same sketches.
"""

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", default="50")
    ap.add_argument("--scale", type=float, default=1.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from piti_core.plugins import get_plugin_manager
    from piti_core.runs import load_run, read_run_meta
    from piti_core.sampling import sample_base, save_grid
    from piti_core.train.finetune import shipped_prior

    host = get_plugin_manager()
    run = load_run(args.run, names=["base"], extra_sections=host.task_sections())
    cfg = run.config
    task = host.task(read_run_meta(args.run)["task"])
    prior_dir = read_run_meta(args.run).get("prior") or shipped_prior(cfg.preset)
    prior = load_run(prior_dir, names=["text_base"])
    ds = task.build_dataset(cfg, "val", image_sizes=(cfg.model.image_size,), train=False)
    items = [ds[i] for i in range(min(args.n, len(ds)))]
    cond = torch.stack([it["cond"] for it in items])
    gt = torch.stack([it["image"] for it in items])

    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    tuned = sample_base(run.models["base"], cond, task.null_condition(cond), cfg, sampler="ddpm", steps=args.steps,
                        scale=args.scale, generator=gen)
    from piti_core.models.text import PAD_TOKEN

    empty = torch.full((len(items), prior.config.text.context_length), PAD_TOKEN, dtype=torch.long)
    gen = torch.Generator().manual_seed(args.seed)
    uncond = sample_base(prior.models["text_base"], empty, empty, prior.config, sampler="ddpm", steps=args.steps,
                         scale=1.0, generator=gen)
    result = {
        "n": len(items), "steps": args.steps, "scale": args.scale, "seconds": round(time.time() - t0, 1),
        "finetuned": task.alignment(tuned, {"cond": cond}, cfg),
        "prior_unconditional": task.alignment(uncond, {"cond": cond}, cfg),
        "ground_truth": task.alignment(gt, {"cond": cond}, cfg),
    }
    rows = [[task.visualize(c, cfg), (a + 1) / 2, (b + 1) / 2, (g + 1) / 2]
            for c, a, b, g in zip(cond, tuned, uncond, gt)][:8]
    save_grid(f"{args.run}/alignment.png", rows)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
