"""Run stage 1 for a few steps; launched by test_ddp.py, alone or under torchrun."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_config  # noqa: E402

from piti_core.train.finetune import finetune_stages, train  # noqa: E402

data_dir, prior_dir, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg, host = tiny_config(data_dir, f"train.batch_size={batch}", "train.stage1_steps=3", "train.stage1_cont_steps=0",
                        "train.stage2_steps=0", "train.upsampler_steps=0", "train.save_every=100")
train(cfg, task=host.task("sketch"), run_dir=out, stages=finetune_stages(cfg), prior_dir=Path(prior_dir),
      resume=False, overwrite=False, previews=False)
