"""A run whose weights overflow ends with a TrainingError and saves no NaN/inf weights."""

import pytest
import torch

from piti_core.errors import TrainingError
from piti_core.train.finetune import finetune_stages, train

from .conftest import tiny_config


@pytest.mark.parametrize("save_every", [2, 100])  # caught at a checkpoint / at the end of the stage
def test_overflowing_weights_end_the_run_and_nothing_is_saved(data_dir, prior_dir, tmp_path, one_thread, save_every):
    # a finite learning rate so large that AdamW's second step takes the encoder weights past fp32's range
    cfg, host = tiny_config(data_dir, "train.lr=1e38", "train.stage1_steps=3", "train.stage1_cont_steps=1",
                            "train.stage2_steps=1", "train.upsampler_steps=0", f"train.save_every={save_every}")
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="stage stage1 .*NaN/inf"):
        train(cfg, task=host.task("sketch"), run_dir=run, stages=finetune_stages(cfg), prior_dir=prior_dir,
              resume=False, overwrite=False, previews=False)
    assert not (run / "run.json").exists() and not (run / "base.safetensors").exists()
    assert not list(run.glob("stages/*.safetensors"))


def test_weights_checked_before_they_are_saved():
    from piti_core.train.session import check_finite

    check_finite({"w": torch.ones(3), "step": torch.tensor([7])}, "here")
    with pytest.raises(TrainingError, match="here: weights became NaN/inf \\(w and 1 more\\)"):
        check_finite({"w": torch.tensor([1.0, float("nan")]), "v": torch.tensor([float("inf")])}, "here")


def test_a_stage_ending_on_nonfinite_steps_is_an_error():
    from tests.train.test_trainer import _trainer

    _, trainer = _trainer([1.0, float("nan")])
    trainer.train_step()
    trainer.check_ended_finite("stage1")  # the last step was finite
    trainer.train_step()
    with pytest.raises(TrainingError, match="stage stage1 ended on 1 NaN/inf steps in a row \\(from step 2\\)"):
        trainer.check_ended_finite("stage1")


def test_fp16_skips_are_the_scalers_until_the_weights_break():
    """With fp16 the gradient scaler skips overflowing steps itself; NaN weights still end training."""
    from piti_core.config import resolve_config
    from piti_core.train.loop import BatchStream, Trainer
    from tests.train.test_trainer import Data

    model = torch.nn.Linear(2, 1)

    def loss_fn(batch, trainer):
        return model(batch["x"]).pow(2).mean() * float("inf"), {}

    trainer = Trainer(model=model, groups=[("all", list(model.named_parameters()), 1e-2)], loss_fn=loss_fn,
                      stream=BatchStream(Data(), 2, 0), tcfg=resolve_config(preset="tiny").train,
                      device=torch.device("cpu"), dtype=torch.float16, max_nonfinite=3)
    for _ in range(5):  # the scaler lowers its scale: no error while the weights are fine
        trainer.train_step()
    trainer.check_ended_finite("stage2")
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="NaN/inf for 6 steps in a row.*--dtype fp32"):
        trainer.train_step()
