"""Every built-in task end to end: `piti train --task X` on the tiny preset (every stage, one step each)
on a small shared toy world, then `piti sample` from a condition file in the task's own file format."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli

TASKS = ("mask", "sketch", "depth", "normal", "depth-normal")
# every stage of the recipe runs, for one step: the shortest run that still writes a complete run dir
SHORT = ["encoder.layers=1", "encoder.cnn_channels=8,8,16,16",  # the encoder is new (the decoder is the prior)
         "train.stage1_steps=1", "train.stage1_cont_steps=1", "train.stage2_steps=1", "train.upsampler_steps=1",
         "train.batch_size=2", "train.perceptual=none", "data.toyworld_samples=8"]


def _depth_mm(h=48, w=80):
    """A slanted floor with a box in front of it, in millimetres (16-bit PNG convention), 0 = unknown."""
    rows = np.linspace(8000, 1500, h)[:, None] * np.ones((1, w))
    rows[16:36, 30:50] = 1200
    rows[:4] = 0  # sky: no depth
    return rows.astype(np.uint16)


def _write_condition(task: str, folder):
    """One condition file per task, in the format a user would give (not square, so the crop runs)."""
    path = folder / f"{task}.png"
    if task == "mask":  # class ids 0 (sky) and 3
        ids = np.zeros((48, 80), np.uint8)
        ids[24:, :] = 3
        Image.fromarray(ids).save(path)
    elif task == "sketch":  # dark strokes on white
        arr = np.full((48, 80), 255, np.uint8)
        arr[10, 5:75] = 0
        arr[10:40, 40] = 0
        Image.fromarray(arr).save(path)
    elif task in ("depth", "depth-normal"):  # 16-bit PNG in mm; depth-normal derives its normals from it
        Image.fromarray(_depth_mm()).save(path)
    elif task == "normal":  # RGB (n + 1) / 2 * 255: left half faces the camera, right half tilts right
        n = np.zeros((48, 80, 3), np.float32)
        n[:, :40] = (0, 0, 1)
        n[:, 40:] = (0.6, 0, 0.8)
        Image.fromarray(((n + 1) / 2 * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    from tests.helpers import one_torch_thread

    with one_torch_thread():  # small convolutions on the shared 2-core CI machines run faster this way
        yield


@pytest.fixture(scope="module")
def world(piti_home, tmp_path_factory):
    """A folder for runs and inputs; the toy world is rendered once into the module's PITI_HOME."""
    return tmp_path_factory.mktemp("e2e")


@pytest.mark.parametrize("task", TASKS)
def test_train_then_sample(task, world):
    run = world / f"run-{task}"
    res = CliRunner().invoke(cli, ["train", "--task", task, "--preset", "tiny", "--out", str(run), "--no-preview",
                                   *[a for kv in SHORT for a in ("--set", kv)]])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(run)
    meta = json.loads((run / "run.json").read_text())
    assert meta["task"] == task and meta["stages"] == ["stage1", "stage1-cont", "stage2", "upsampler"]
    assert set(meta["models"]) == {"base", "upsampler"}

    cond = _write_condition(task, world)
    out = world / f"out-{task}"
    res = CliRunner().invoke(cli, ["sample", "--run", str(run), "--input", str(cond), "--out", str(out),
                                   "--steps", "2", "--upsampler-steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    written = json.loads(res.stdout)["outputs"]
    assert [w["input"] for w in written] == [str(cond)]
    final, base = Image.open(written[0]["image"]), Image.open(written[0]["base"])
    assert final.format == "PNG" and final.size == (64, 64) and final.mode == "RGB"  # tiny: 32 -> 64 upsampler
    assert base.size == (32, 32)
    shown = np.asarray(Image.open(written[0]["condition"]))
    assert shown.shape == (64, 64, 3) and shown.std() > 0  # the condition file's structure, not a blank
