"""The adversarial upsampler stage runs: degraded low-res input, perceptual + GAN terms after warm-up."""

import json

import pytest

from piti_core.train.finetune import finetune_stages, train

from .conftest import tiny_config


@pytest.mark.parametrize("perceptual", ["none", "auto"])
def test_upsampler_stage_logs_adversarial_terms(data_dir, prior_dir, tmp_path, perceptual):
    cfg, host = tiny_config(data_dir, "train.stage1_steps=0", "train.stage1_cont_steps=0", "train.stage2_steps=0",
                            "train.upsampler_steps=3", "train.adv_warmup=1", "train.batch_size=2",
                            f"train.perceptual={perceptual}", "train.disc_channels=8")
    run = tmp_path / "run"
    train(cfg, task=host.task("sketch"), run_dir=run, stages=finetune_stages(cfg), prior_dir=prior_dir,
          resume=False, overwrite=False, previews=False)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "adv" not in rows[0] and "adv" in rows[1] and "d_d_loss" in rows[1]
    meta = json.loads((run / "run.json").read_text())
    assert meta["models"] == {"upsampler": "upsampler.safetensors"}


def test_pretrain_warm_start_takes_the_prior_decoders(data_dir, prior_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from piti_core.train.finetune import prior_stages

    cfg, _ = tiny_config(data_dir, "train.pretrain_steps=1", "train.pretrain_lr=1e-12", "text.context_length=24")
    run = tmp_path / "prior"
    train(cfg, task=None, run_dir=run, stages=prior_stages(cfg, "prior-base"), prior_dir=prior_dir, resume=False,
          overwrite=False, previews=False, source="pretrain")
    got = load_file(str(run / "text_base.safetensors"))
    old = load_file(str(prior_dir / "text_base.safetensors"))
    for k, v in old.items():
        if k.startswith("decoder."):
            torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0)
    assert got["encoder.positional_embedding"].shape[0] == 24  # a fresh caption encoder of the new size
