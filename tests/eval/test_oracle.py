"""The toy-world oracle: the shipped weights read fresh renders, the alignment metrics of the mask,
depth and normal tasks rank matching images above mismatched ones, and load errors are one line."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from piti_core.errors import CheckpointError
from piti_core.eval.oracle import WEIGHTS, load_oracle
from piti_core.eval.oracle_metrics import depth_from_encoding, depth_scores, normal_scores, segmentation_scores
from piti_core.eval.oracle_model import OracleConfig, OracleNet
from piti_core.eval.oracle_train import render_set, save_oracle, to_unit

# World seed and indices no oracle was trained or scored on (training: world 1000; docs: world 777777).
FRESH_SEED = 31337
HIGHER = ("miou", "pixel_acc", "delta1")


@pytest.fixture(scope="module")
def renders():
    return render_set(12, 64, FRESH_SEED)


@pytest.fixture(scope="module")
def oracle():
    return load_oracle("cpu")


@pytest.fixture(scope="module")
def tasks_and_cfg():
    from piti_core.config import resolve_config
    from piti_core.plugins import PluginHost

    host = PluginHost()
    host.load_entry_points()
    return host.tasks, resolve_config(preset="tiny", extra_sections=host.task_sections())


# ------------------------------------------------------------------------------------------ metrics

def test_segmentation_scores_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 1]]])
    s = segmentation_scores(pred, target, num_classes=3)
    # class 0: I=1, U=2; class 1: I=2, U=3; class 2: I=2, U=2 (ignored pixels left out)
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert s["pixel_acc"] == pytest.approx(5 / 6)
    assert math.isnan(segmentation_scores(pred, torch.full_like(target, 255), 3)["miou"])


def test_depth_scores_are_median_scaled_and_normal_angles_in_degrees():
    depth = torch.rand(2, 1, 8, 8) * 10 + 1
    assert depth_scores(3 * depth, depth) == pytest.approx({"absrel": 0.0, "delta1": 1.0}, abs=1e-6)
    off = depth.clone()
    off[:, :, :4] *= 2  # half the pixels twice as far: after median scaling ...
    s = depth_scores(off, depth)
    assert 0.2 < s["absrel"] < 1.0 and s["delta1"] <= 0.5 + 1e-9
    up = torch.zeros(1, 3, 4, 4)
    up[:, 1] = 1
    right = torch.zeros(1, 3, 4, 4)
    right[:, 0] = 1
    assert normal_scores(right, up)["normal_deg"] == pytest.approx(90.0, abs=1e-4)
    assert normal_scores(up, up)["normal_deg"] == pytest.approx(0.0, abs=1e-2)
    assert math.isnan(normal_scores(up, torch.zeros_like(up))["normal_deg"])


def test_depth_from_encoding_inverts_the_depth_task_encoding():
    from piti_plugins.geometry.tasks import encode_depth

    depth = torch.rand(2, 1, 16, 16) * 20 + 1
    cond = torch.stack([encode_depth(d) for d in depth])
    target, valid = depth_from_encoding(cond, depth)  # a perfect prediction: the fit recovers it
    assert valid.float().mean() > 0.99
    assert torch.allclose(target[valid].float(), depth[valid], rtol=1e-4)


# ----------------------------------------------------------------------------------- shipped oracle

def test_shipped_oracle_reads_fresh_renders_far_above_chance(oracle, renders):
    pred = oracle.predict(to_unit(renders["images"]))
    labels, depth, normals = renders["labels"], renders["depth"], renders["normals"]
    valid = depth > 0
    seg = segmentation_scores(pred["labels"], labels, len(oracle.classes))
    # trivial baselines: the majority class everywhere; the predictions of another image
    majority = torch.full_like(labels, int(torch.bincount(labels.flatten().long()).argmax()))
    base = segmentation_scores(majority, labels, len(oracle.classes))
    shuffled = segmentation_scores(pred["labels"], labels.roll(1, 0), len(oracle.classes))
    assert seg["miou"] >= 0.5 and seg["pixel_acc"] >= 0.85, seg  # measured 0.65, 0.92; chance 0.02, 0.23
    assert seg["miou"] > max(base["miou"], shuffled["miou"]) + 0.3
    assert seg["pixel_acc"] > max(base["pixel_acc"], shuffled["pixel_acc"]) + 0.3
    dep = depth_scores(pred["depth"], depth, valid)
    dep_shuffled = depth_scores(pred["depth"].roll(1, 0), depth, valid & valid.roll(1, 0))
    assert dep["absrel"] <= 0.15 and dep["delta1"] >= 0.8, dep  # measured 0.089, 0.905
    assert dep["absrel"] < dep_shuffled["absrel"] / 2
    nor = normal_scores(pred["normals"], normals, valid[:, 0])
    nor_shuffled = normal_scores(pred["normals"].roll(1, 0), normals, (valid & valid.roll(1, 0))[:, 0])
    assert nor["normal_deg"] <= 15.0, nor  # measured 10.1; shuffled 23.8
    assert nor["normal_deg"] < 0.6 * nor_shuffled["normal_deg"]


def test_oracle_resizes_inputs_and_gives_features(oracle, renders):
    x = to_unit(renders["images"][:4])
    small = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    pred = oracle.predict(small)
    assert pred["labels"].shape == (4, 32, 32) and pred["depth"].shape == (4, 1, 32, 32)
    assert torch.allclose(pred["normals"].norm(dim=1), torch.ones(4, 32, 32), atol=1e-4)
    assert oracle.predict(small, size=64)["labels"].shape == (4, 64, 64)
    f = oracle.features(x)
    assert f.shape == (4, oracle.net.cfg.widths[-1]) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])  # different scenes, different features
    # the base model's 32 px samples: the oracle still segments them well above chance
    seg = segmentation_scores(oracle.predict(small, size=64)["labels"], renders["labels"][:4], 12)
    assert seg["pixel_acc"] >= 0.75, seg


# ------------------------------------------------------------------------------- task alignment

def _batch(task, renders, cfg, idx=slice(None)):
    fields = []
    for i in range(len(renders["images"]))[idx]:
        d = renders["depth"][i]
        fields.append({"labels": renders["labels"][i].long(), "depth": d, "depth_valid": d > 0,
                       "normals": renders["normals"][i], "normals_valid": d > 0})
    batch = {k: torch.stack([f[k] for f in fields]) for k in fields[0]}
    batch["cond"] = torch.stack([task.encode(f, cfg) for f in fields])
    return batch


@pytest.mark.parametrize("name,keys", [("mask", {"miou", "pixel_acc"}), ("depth", {"absrel", "delta1"}),
                                       ("normal", {"normal_deg"}),
                                       ("depth-normal", {"absrel", "delta1", "normal_deg"})])
def test_alignment_ranks_the_true_image_above_a_mismatched_one(name, keys, tasks_and_cfg, renders):
    tasks, cfg = tasks_and_cfg
    task = tasks[name]
    batch = _batch(task, renders, cfg, slice(0, 6))
    images = to_unit(renders["images"][:6])
    wrong = images.roll(1, 0)
    small = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True,
                                            align_corners=False)
    for b in (batch, {"cond": batch["cond"]}):  # with the data set's fields, and from the condition alone
        good, bad, base = task.alignment(images, b, cfg), task.alignment(wrong, b, cfg), task.alignment(small, b, cfg)
        assert set(good) == keys == set(bad) == set(base)
        for key in keys:
            better = (lambda a, c: a > c) if key in HIGHER else (lambda a, c: a < c)
            assert better(good[key], bad[key]), (key, good[key], bad[key])
            assert better(base[key], bad[key]), (key, base[key], bad[key])  # 32 px samples too


def test_alignment_is_empty_off_the_toy_world(tasks_and_cfg, renders, tmp_path):
    import attrs

    tasks, cfg = tasks_and_cfg
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "my photos"}))
    other = attrs.evolve(cfg, data=attrs.evolve(cfg.data, root=str(tmp_path)))
    batch = _batch(tasks["depth"], renders, cfg, slice(0, 2))
    assert tasks["depth"].alignment(to_unit(renders["images"][:2]), batch, other) == {}
    assert tasks["normal"].alignment(to_unit(renders["images"][:2]), batch, other) == {}
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "toyworld", "generator": "piti toyworld 1"}))
    assert set(tasks["depth"].alignment(to_unit(renders["images"][:2]), batch, other)) == {"absrel", "delta1"}


# -------------------------------------------------------------------------------------- loading

def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_oracle("cpu", tmp_path / "nowhere")
    assert "not found" in _one_line(err) and "piti data oracle" in _one_line(err)

    folder = tmp_path / "small"
    save_oracle(folder, OracleNet(OracleConfig(size=16, widths=(8, 16))), {})
    assert load_oracle("cpu", folder).predict(torch.zeros(1, 3, 16, 16))["labels"].shape == (1, 16, 16)

    cfg = json.loads((folder / "config.json").read_text())
    cfg["network"]["widths"] = [8, 24]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_oracle("cpu", folder)
    assert "do not match" in _one_line(err)

    cfg["network"]["widths"] = [8, 16]
    cfg["classes"] = cfg["classes"][:-1]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_oracle("cpu", folder)
    assert "classes" in _one_line(err)

    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        load_oracle("cpu", folder)
    assert "config" in _one_line(err)

    save_oracle(folder, OracleNet(OracleConfig(size=16, widths=(8, 16))), {}, overwrite=True)
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        load_oracle("cpu", folder)
    assert WEIGHTS in _one_line(err)


def test_train_command_writes_a_loadable_oracle_and_refuses_to_overwrite(tmp_path):
    from piti_cli.main import cli

    out = tmp_path / "oracle"
    args = ["data", "oracle", "--out", str(out), "--n", "4", "--steps", "2", "--batch-size", "2", "--eval-n", "2",
            "--threads", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith(f"piti data oracle --out {out} --n 4 --seed 1000 --steps 2")
    assert set(record["heldout"]) >= {"miou", "pixel_acc", "absrel", "delta1", "normal_deg"}
    assert load_oracle("cpu", out).size == 64
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = CliRunner().invoke(cli, args + ["--overwrite", "--eval-seed", "1000"])
    assert res.exit_code == 2 and "another world" in res.output
