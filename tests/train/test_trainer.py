"""Trainer: non-finite steps are skipped and counted, and K in a row stop training."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.errors import TrainingError
from piti_core.train.loop import BatchStream, Trainer


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


def _trainer(losses):
    cfg = resolve_config(preset="tiny")
    model = torch.nn.Linear(2, 1)
    calls = iter(losses)

    def loss_fn(batch, trainer):
        scale = next(calls)
        return model(batch["x"]).pow(2).mean() * scale, {}

    groups = [("all", list(model.named_parameters()), 1e-2)]
    return model, Trainer(model=model, groups=groups, loss_fn=loss_fn, stream=BatchStream(Data(), 2, 0),
                          tcfg=cfg.train, device=torch.device("cpu"), dtype=torch.float32, max_nonfinite=3)


def test_nonfinite_step_is_skipped_and_counted():
    model, trainer = _trainer([1.0, float("nan"), 1.0])
    trainer.train_step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = trainer.train_step()
    assert logs["skipped"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the NaN step changed nothing
    trainer.train_step()
    assert trainer.nonfinite_in_row == 0 and trainer.skipped == 1


def test_k_nonfinite_steps_in_a_row_stop_training():
    _, trainer = _trainer([float("inf")] * 5)
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(TrainingError, match="NaN/inf for 3 steps in a row"):
        trainer.train_step()


def test_condition_mismatch_is_refused(tmp_path):
    from piti_core.errors import DataError
    from piti_plugins.sketch import SketchTask

    cfg = resolve_config(preset="tiny")
    with pytest.raises(DataError, match="expects conditions of shape"):
        SketchTask().check_condition(torch.zeros(3, 64, 64), cfg, "somewhere")
    with pytest.raises(DataError, match="must lie in"):
        SketchTask().check_condition(torch.full((1, 64, 64), 5.0), cfg, "somewhere")


def test_skipped_stages_hand_on_their_encoder_init():
    from piti_core.train.finetune import finetune_stages

    cfg = resolve_config(preset="tiny", overrides=["train.stage1_cont_steps=0"])
    stages = {s.name: s for s in finetune_stages(cfg)}
    assert "stage1-cont" not in stages and stages["stage2"].encoder_init == "stage1"
    cfg = resolve_config(preset="tiny", overrides=["train.stage1_steps=0", "train.stage1_cont_steps=0"])
    stages = {s.name: s for s in finetune_stages(cfg)}
    assert stages["stage2"].encoder_init is None and stages["stage2"].index == 2


@pytest.mark.parametrize("frozen_dropout", [False, True])
def test_frozen_modules_run_without_dropout_unless_asked(frozen_dropout):
    """Stage 1's frozen decoder is in eval mode during the step (train.frozen_dropout=true: official dropout)."""
    cfg = resolve_config(preset="tiny", overrides=[f"train.frozen_dropout={str(frozen_dropout).lower()}"])
    head, body = torch.nn.Linear(2, 4), torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    body.requires_grad_(False)
    seen = []

    def loss_fn(batch, trainer):
        seen.append((head.training, body[0].training))
        return body(head(batch["x"])).pow(2).mean(), {}

    model = torch.nn.Sequential(head, body)
    trainer = Trainer(model=model, groups=[("head", list(head.named_parameters()), 1e-2)], loss_fn=loss_fn,
                      stream=BatchStream(Data(), 2, 0), tcfg=cfg.train, device=torch.device("cpu"),
                      dtype=torch.float32, frozen=(body,))
    trainer.train_step()
    trainer.train_step()
    assert seen == [(True, frozen_dropout)] * 2


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clip_grad_norm_matches_torch(scale):
    from piti_core.train.loop import clip_grad_norm

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n)) for n in (10, 300, 7)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, ref):
        p.grad = torch.randn_like(p) * scale
        q.grad = p.grad.clone()
    ref.append(torch.nn.Parameter(torch.zeros(3)))  # a parameter without a gradient is ignored by both
    ours.append(ref[-1])
    norm = clip_grad_norm(ours, 1.0)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(ref, 1.0)), rel=1e-6)
    assert (norm > 1.0) == (scale == 10.0)
    for p, q in zip(ours[:-1], ref[:-1]):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
