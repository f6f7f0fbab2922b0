"""Held-out diffusion loss of each base stage's EMA weights (fixed timesteps and noise, 64 val pairs).

    python docs/scripts/heldout_stage_loss.py RUN_DIR

For a sketch run of the tiny preset from the shipped prior: the loss of the prior decoder with a random
encoder, then of stages/stage1, stage1-cont and stage2.
"""
import sys, torch
from safetensors.torch import load_file
torch.set_num_threads(1); torch.manual_seed(0)
from piti_core.models.build import build_base
from piti_core.plugins import get_plugin_manager
from piti_core.runs import load_run
from piti_core.train.finetune import prior_decoders, shipped_prior
from piti_core.diffusion import build_schedule, training_losses
run = sys.argv[1]
host = get_plugin_manager()
cfg = load_run(run, names=["base"], extra_sections=host.task_sections()).config
task = host.task("sketch")
val = task.build_dataset(cfg, "val", image_sizes=(32,), train=False)
items = [val[i] for i in range(64)]
x = torch.stack([b["image"] for b in items]).float(); c = torch.stack([b["cond"] for b in items])
sched = build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps)
g = torch.Generator().manual_seed(1)
t = torch.arange(64) * 1000 // 64; noise = torch.randn(x.shape, generator=g)
def loss(model):
    model.eval()
    with torch.no_grad():
        return float(training_losses(lambda a, tt: model(a, tt, c), x, t, sched, noise=noise)["mse"].mean())
m = build_base(cfg, 1); m.decoder.load_state_dict(prior_decoders(shipped_prior("tiny"), cfg)["base"])
print("start (random encoder, prior decoder)", round(loss(m), 5))
for st in ("stage1", "stage1-cont", "stage2"):
    m.load_state_dict(load_file(f"{run}/stages/{st}.safetensors"))
    print(st, round(loss(m), 5))
