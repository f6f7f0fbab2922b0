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


@pytest.mark.parametrize("values", [[3.0, -4.0], [1e-30, 2e-30], [1e20, 1.0], [1.0, float("inf")],
                                    [1.0, float("nan")]])
def test_total_grad_norm_matches_foreach_norm_including_overflow_inf_and_nan(values, monkeypatch):
    from piti_core.train import loop

    torch.manual_seed(0)
    big = torch.randn(loop.DOT_NORM_MIN_VALUES + 10)  # large enough for the dot path
    big[:2] = torch.tensor(values)
    small = torch.randn(2)
    small[:2] = torch.tensor(values)
    dots = []
    real_dot = torch.dot
    monkeypatch.setattr(torch, "dot", lambda a, b: dots.append(a.numel()) or real_dot(a, b))
    for grads in ([big, torch.randn(50), torch.randn(3, 4)[:, :2]], [big], [small, torch.randn(3, 4)[:, :2]]):
        dots.clear()
        ref = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        assert loop.total_grad_norm(grads) == pytest.approx(ref, rel=1e-6, nan_ok=True)
        assert dots == ([big.numel()] if grads[0] is big else [])  # only large contiguous fp32 take a dot


def test_clipping_folded_into_fused_adamw_matches_scaling_the_gradients():
    from piti_core.train.loop import clip_grad_norm

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n)) for n in (10, 300)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = torch.optim.AdamW(ours, lr=1e-2, fused=True)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, fused=True)
    for _ in range(3):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p) * 10
            q.grad = p.grad.clone()
        norm = clip_grad_norm(ours, 1.0, fold_into=opt)
        assert norm > 1.0 and opt.grad_scale is not None
        assert float(clip_grad_norm(ref, 1.0)) == pytest.approx(norm, rel=1e-6)
        opt.step()
        opt.grad_scale = None
        ref_opt.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_trainer_folds_clipping_only_without_a_grad_scaler(monkeypatch):
    from piti_core.train import loop

    model, trainer = _trainer([1e4] * 4)  # a loss this large always clips at grad_clip 1.0
    assert loop._folds_grad_scale(trainer.opt, trainer.scaler)
    assert not loop._folds_grad_scale(trainer.opt, torch.amp.GradScaler("cpu", enabled=True))
    seen = []
    real_step = trainer.opt.step
    monkeypatch.setattr(trainer.opt, "step", lambda *a, **k: seen.append(trainer.opt.grad_scale) or real_step(*a, **k))
    logs = trainer.train_step()
    assert logs["grad_norm"] > 1.0
    assert seen and seen[0] is not None and float(seen[0]) == pytest.approx(logs["grad_norm"], rel=1e-5)
    assert trainer.opt.grad_scale is None  # the factor belongs to that one step


def test_trainer_steps_equal_with_and_without_the_fold(monkeypatch):
    from piti_core.train import loop

    torch.manual_seed(0)
    a_model, a = _trainer([1e4] * 3)
    torch.manual_seed(0)
    b_model, b = _trainer([1e4] * 3)
    monkeypatch.setattr(loop, "_folds_grad_scale", lambda opt, scaler: opt is a.opt)
    for _ in range(3):
        a.train_step()
        b.train_step()
    for (k, v), w in zip(a_model.state_dict().items(), b_model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
