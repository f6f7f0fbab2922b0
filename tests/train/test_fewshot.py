"""Few-shot training: the subset, the strong augmentation, early stopping (with exact resume), the recipe and
a short `piti train --set fewshot.shots=N` run."""

import json
import math

import attrs
import pytest
import torch
from click.testing import CliRunner

from piti_core.config import FewShotConfig, resolve_config
from piti_core.errors import ConfigError, DataError
from piti_core.train.fewshot import FEWSHOT_JSON, FewShot, choose, fewshot_stages, strong_augment

from .conftest import TINY, tiny_config

STEMS = [f"img{i:03d}" for i in range(40)]


# ------------------------------------------------------------------------------------------ subset
def test_subset_is_deterministic_nested_and_disjoint():
    cfg = FewShotConfig(shots=8, holdout=4)
    plan = choose(STEMS, [], cfg)
    assert plan == choose(list(reversed(STEMS)), [], cfg)  # the order the files were listed in does not matter
    assert len(plan.shots) == 8 and len(plan.holdout) == 4 and not set(plan.shots) & set(plan.holdout)
    bigger = choose(STEMS, [], attrs.evolve(cfg, shots=16))
    assert set(plan.shots) < set(bigger.shots) and bigger.holdout == plan.holdout  # nested, same held-out pairs
    other = choose(STEMS, [], attrs.evolve(cfg, seed=1))
    assert other.shots != plan.shots
    from_val = choose(STEMS, ["v1", "v2", "v3", "v4", "v5"], attrs.evolve(cfg, holdout_from="val"))
    assert set(from_val.holdout) <= {"v1", "v2", "v3", "v4", "v5"} and len(from_val.holdout) == 4


def test_too_many_shots_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"fewshot.shots=40 but the train split of data has 36 pairs after the 4 "
                                          r"held out"):
        choose(STEMS, [], FewShotConfig(shots=40, holdout=4), "data")
    with pytest.raises(ConfigError, match="fewshot.holdout=4 needs 4 pairs in the val split"):
        choose(STEMS, ["v1"], FewShotConfig(shots=2, holdout=4, holdout_from="val"))
    with pytest.raises(ConfigError, match=r"'fewshot.shots': must be >= 0"):
        resolve_config(preset="tiny", overrides=["fewshot.shots=-1"])


def test_a_task_cannot_take_the_name_of_the_fewshot_section():
    from piti_core.plugins import PluginHost
    from piti_core.testing import make_plugin_module

    source = """
from piti_core.hookspecs import hookimpl
from piti_core.tasks import ConditionSpec, Task

class FewShotTask(Task):
    name = "fewshot"
    def condition_spec(self, cfg):
        return ConditionSpec(channels=1)

@hookimpl
def register_tasks(register):
    register(FewShotTask())
"""
    host = PluginHost()
    rec = host.add_plugin(make_plugin_module("piti_test_fewshot_name", source), "fewshot-task")
    assert rec.status == "error" and "task name 'fewshot' is reserved" in rec.message and "fewshot" not in host.tasks


@pytest.fixture(scope="module")
def sketch_set(data_dir):
    cfg, host = tiny_config(data_dir, "fewshot.shots=2", "fewshot.holdout=3", "train.batch_size=4")
    task = host.task("sketch")
    return cfg, task, task.build_dataset(cfg, "train", image_sizes=(cfg.model.image_size,))


def test_training_set_is_the_same_with_workers_and_recorded(sketch_set, tmp_path, one_thread):
    from piti_core.train.loop import BatchStream

    cfg, task, full = sketch_set
    fs = FewShot(cfg, task, tmp_path)
    view = fs.training_set(full)
    saved = json.loads((tmp_path / FEWSHOT_JSON).read_text())
    train_stems = sorted({s.stem for s in full.samples})
    assert saved["train_stems"] == list(choose(train_stems, [], cfg.fewshot).shots)
    assert len(view) == 4 and {s.stem for s in view.samples} == set(saved["train_stems"])  # 2 shots, repeated
    assert len(full) > 20  # the full set is untouched
    batches = [BatchStream(view, 4, seed=3, num_workers=w).batch(1) for w in (0, 1)]
    assert batches[0]["stem"] == batches[1]["stem"]
    assert torch.equal(batches[0]["image"], batches[1]["image"]) and torch.equal(batches[0]["cond"], batches[1]["cond"])
    image, cond = fs.heldout_batch((cfg.model.image_size,), "cpu")
    assert image.shape == (3, 3, 32, 32) and cond.shape[0] == 3
    # a resumed run whose data set now yields other pairs is refused
    (tmp_path / FEWSHOT_JSON).write_text(json.dumps({**saved, "train_stems": ["000", "001"]}))
    with pytest.raises(DataError, match="the data set changed"):
        FewShot(cfg, task, tmp_path).training_set(full)


# ------------------------------------------------------------------------------------------ augmentation
def _scene(size=64):
    """A photo with a bright L-shape and its label map, edges, depth and (sphere) normals."""
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[12:50, 14:26] = True
    inside[38:50, 14:48] = True
    image = torch.where(inside, 0.85, 0.2).expand(3, -1, -1).clone()
    image[0] += 0.05
    edges = (inside.float() - torch.nn.functional.avg_pool2d(inside.float()[None], 3, 1, 1)[0]).abs() > 0.01
    return {"image": image, "labels": torch.where(inside, 3, 1)[None].long(), "edges": edges[None].float(),
            "depth": torch.where(inside, 2.0, 10.0)[None], "depth_valid": torch.ones(1, size, size, dtype=torch.bool),
            "normals": _sphere(size), "normals_valid": torch.ones(1, size, size, dtype=torch.bool)}


def _sphere(size=64):
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x, y = (xs + 0.5) / size * 2 - 1, -((ys + 0.5) / size * 2 - 1)  # +x right, +y up
    r2 = x**2 + y**2
    return torch.stack([x, y, (1 - r2).clamp(min=0).sqrt()]) * (r2 < 1)


def test_strong_augmentation_keeps_photo_and_conditions_aligned():
    aug = strong_augment(FewShotConfig(shots=1), 64, flip=True)
    scene = _scene()
    moved = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = aug(dict(scene))
        labels = out["labels"][0]
        assert set(labels.unique().tolist()) <= {1, 3} and set(out["edges"].unique().tolist()) <= {0.0, 1.0}
        assert out["depth_valid"].all() and out["normals_valid"].all()  # the rotation never pads
        shape = labels == 3
        assert torch.equal(out["depth"][0] == 2.0, shape)  # conditions move as one
        grey = out["image"].mean(0)
        photo_shape = grey > (grey.min() + grey.max()) / 2
        assert (photo_shape == shape).float().mean() > 0.97  # the photo moves with them (edges of the L differ)
        moved += int(not torch.equal(shape, scene["labels"][0] == 3))
    assert moved >= 8  # the geometry did change


@pytest.mark.parametrize("rotation", ["affine", "rotation"])
def test_normals_turn_with_the_picture(rotation):
    import kornia.augmentation as K

    from piti_core.data.transforms import JointAugment

    rot = K.RandomAffine(degrees=(12, 12), p=1.0) if rotation == "affine" else K.RandomRotation(degrees=(12, 12), p=1.0)
    sphere = _sphere()
    inner = sphere[2] > 0.55  # x² + y² < 0.7: on the sphere, away from its rim where nearest resampling jumps
    for augs in ([rot], [K.RandomHorizontalFlip(p=1.0), rot]):  # the flip before the turn checks the order
        out = JointAugment(augs)({"image": torch.zeros(3, 64, 64), "normals": sphere.clone()})["normals"]
        # a sphere looks the same turned and mirrored: its normals must come out unchanged
        assert (out - sphere)[:2, inner].abs().max() < 0.06
        assert (out[:2, inner] - _unrotated(sphere, augs)[:2, inner]).abs().max() > 0.1  # the turn was applied


def _unrotated(sphere, augs):
    """What the normals would be if only the pixels moved (the vectors not turned)."""
    import kornia.augmentation as K

    seq = K.AugmentationSequential(*augs, data_keys=["input", "mask"])
    return seq(torch.zeros(1, 3, 64, 64), sphere[None])[1][0]


# ------------------------------------------------------------------------------------------ recipe
def test_fewshot_stages_lengthen_stage1_and_slow_the_decoder():
    from piti_core.train.recipe import piti_stages, select

    cfg = resolve_config(preset="tiny", overrides=["fewshot.shots=8", "fewshot.stage2_mult=0"])
    stages = {s.name: s for s in fewshot_stages(piti_stages(cfg.train), cfg.fewshot)}
    t, f = cfg.train, cfg.fewshot
    assert stages["stage1"].steps == round(t.stage1_steps * f.stage1_mult) > t.stage1_steps
    assert stages["stage1-cont"].steps == round(t.stage1_cont_steps * f.stage1_mult)
    assert stages["stage1"].decoder_lr is None  # still encoder only
    assert stages["upsampler"].decoder_lr == pytest.approx(t.upsampler_lr * f.decoder_lr_mult)
    assert stages["upsampler"].lr == t.upsampler_lr  # its fresh encoder learns at the full rate
    kept = select(list(stages.values()), None)
    assert [s.name for s in kept] == ["stage1", "stage1-cont", "upsampler"]  # stage2_mult=0 drops stage 2


# ------------------------------------------------------------------------------------------ early stopping
class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


class _Objective:
    def aux(self):
        return {}

    def __call__(self, batch, trainer):
        return trainer.model(batch["x"]).pow(2).mean(), {}


LOSSES = {0: 5.0, 2: 3.0, 4: 2.0, 6: 2.5, 8: 2.1, 10: 2.2, 12: 1.0}  # stalls after step 4; 12 is never reached


def _stage(run_dir, seen, stop_after=None, resume_rows=None):
    from piti_core.train.early_stop import EarlyStopping
    from piti_core.train.recipe import Stage
    from piti_core.train.session import run_stage

    tcfg = resolve_config(preset="tiny", overrides=["train.save_every=3", "train.log_every=1"]).train

    def build():
        model = torch.nn.Linear(2, 1)
        return model, [("all", list(model.named_parameters()), 0.05)], _Objective(), _Data(), []

    def score(model, trainer):
        seen[trainer.step] = {k: v.clone() for k, v in model.state_dict().items()}  # the EMA weights
        return {"heldout_loss": LOSSES[trainer.step]}

    steps = {"n": 0}

    def callback(event):
        steps["n"] += event.get("event") == "step"

    stage = Stage("stage1", "base", 40, 0.05, None, 0.0, "uniform")
    return run_stage(stage, 0, run_dir=run_dir, build=build, tcfg=tcfg, device=torch.device("cpu"),
                     dtype=torch.float32, callback=callback,
                     should_stop=(lambda: steps["n"] >= stop_after) if stop_after else (lambda: False),
                     monitor=EarlyStopping(score, every=2, patience=3))


def test_early_stopping_ends_a_stalled_stage_with_its_best_weights_and_resumes_exactly(tmp_path):
    from piti_core.train.session import Interrupted

    seen = {}
    (tmp_path / "a").mkdir()
    state = _stage(tmp_path / "a", seen)
    assert max(seen) == 10  # best at step 4, no improvement at 6, 8, 10: stopped 30 steps early
    for k, v in seen[4].items():
        assert torch.equal(state[k], v), k
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if "heldout_loss" in r]
    assert [r["step"] for r in held] == [0, 2, 4, 6, 8, 10] and held[-1]["early_stop"] and held[-1]["best_step"] == 4
    assert max(r["step"] for r in rows) == 10

    (tmp_path / "b").mkdir()
    with pytest.raises(Interrupted):  # stop at step 7: the checkpoint holds the best weights of step 4
        _stage(tmp_path / "b", {}, stop_after=7)
    resumed = _stage(tmp_path / "b", {})
    for k in state:
        assert torch.equal(resumed[k], state[k]), k
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows_b == rows  # every row once, the same values


def test_early_stopping_counts_only_relative_improvements_above_min_delta():
    from types import SimpleNamespace

    from piti_core.train.early_stop import EarlyStopping
    from piti_core.train.ema import EMA

    model = torch.nn.Linear(2, 1)
    named = dict(model.named_parameters())
    trainer = SimpleNamespace(model=model, named=named, ema=EMA(named, 0.9))
    trainer.ema.shadow["weight"] += 1.0  # EMA weights unlike the live ones
    live = model.weight.detach().clone()
    losses = iter([1.0, 0.9995, 0.95, 0.9499])
    stop = EarlyStopping(lambda m, t: {"heldout_loss": next(losses)}, every=1, patience=2, min_delta=0.001)
    rows = [stop.evaluate(trainer, step) for step in range(4)]
    assert [r["bad_evals"] for r in rows] == [0, 1, 0, 1] and [r["best_step"] for r in rows] == [0, 0, 2, 2]
    assert not stop.stopped and model.training and torch.equal(model.weight, live)  # mode and weights given back
    assert torch.equal(stop.best["weight"], live + 1.0)  # the best weights are the EMA ones


# ------------------------------------------------------------------------------------------ CLI
def _args(*kv):
    return [a for item in kv for a in ("--set", item)]


def test_cli_fewshot_run(data_dir, prior_dir, tmp_path, one_thread):
    from piti_cli.main import cli
    from piti_core.data.index import build_index

    run = tmp_path / "run"
    base = ["train", "--task", "sketch", "--preset", "tiny", "--data", str(data_dir), "--prior", str(prior_dir),
            "--no-preview", *_args(*TINY, "train.perceptual=none", "train.stage1_steps=2", "train.stage1_cont_steps=1",
                                   "train.stage2_steps=4", "train.upsampler_steps=2", "fewshot.holdout=2",
                                   "fewshot.eval_every=2", "fewshot.eval_timesteps=2")]
    res = CliRunner().invoke(cli, [*base, "--out", str(run), "--set", "fewshot.shots=8"])
    assert res.exit_code == 0, res.output
    assert "few-shot: 8 training pairs" in res.stderr
    recorded = json.loads((run / FEWSHOT_JSON).read_text())
    train_stems = [s.stem for s in build_index(data_dir).split("train")]
    expected = choose(train_stems, [], attrs.evolve(FewShotConfig(), shots=8, holdout=2))
    assert recorded["train_stems"] == list(expected.shots) and recorded["holdout_stems"] == list(expected.holdout)
    meta = json.loads((run / "run.json").read_text())
    assert meta["fewshot"]["train_stems"] == recorded["train_stems"] and set(meta["models"]) == {"base", "upsampler"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = {r["stage"]: r["step"] for r in rows if "loss" in r}
    assert trained == {"stage1": 4, "stage1-cont": 2, "stage2": 1, "upsampler": 1}  # x2, x2, x0.25, x0.5
    assert {r["stage"] for r in rows if "heldout_loss" in r} == set(trained)
    assert all(math.isfinite(r["heldout_loss"]) for r in rows if "heldout_loss" in r)

    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "too-many"), "--set", "fewshot.shots=500"])
    assert res.exit_code == 2 and "fewshot.shots=500" in res.output and "Traceback" not in res.output
