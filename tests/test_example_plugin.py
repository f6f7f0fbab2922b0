"""The example third-party plugin (docs/examples/piti-task-example) once it is pip-installed, as .ci/run does.

It must show up in `piti plugins` under its own distribution, honour the task contract, and train
through the whole PITI recipe on the toy world with `piti train --task colorize`, then sample.
"""

import json
from importlib import metadata

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli

DIST = "piti-task-example"
TASK = "colorize"


def _installed_version():
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


pytestmark = pytest.mark.skipif(
    _installed_version() is None,
    reason=f"the example plugin is not installed: pip install ./docs/examples/{DIST} (.ci/run does)")

# a few steps per stage; the decoders keep the tiny sizes (they must match the shipped prior), the new encoder shrinks
FEW_STEPS = ["train.stage1_steps=2", "train.stage1_cont_steps=1", "train.stage2_steps=1", "train.upsampler_steps=1",
             "train.batch_size=2", "train.perceptual=none", "encoder.layers=1", "encoder.cnn_channels=8,8,16,16",
             "data.toyworld_samples=8"]


def _sets(*pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_plugins_lists_it_under_its_distribution(clean_plugin_env):
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.stdout) if r["distribution"] == DIST]
    assert len(rows) == 1, f"no plugin from {DIST} in {res.stdout}"
    row = rows[0]
    assert row["status"] == "ok", row["message"]
    assert row["name"] == "example" and row["module"] == "piti_task_example" and row["source"] == "entry-point"
    assert row["version"] == _installed_version() and row["provides"] == {"tasks": [TASK]}


def test_task_passes_the_shared_contract(clean_plugin_env):
    from piti_core.config import resolve_config
    from piti_core.plugins import get_plugin_manager
    from piti_core.testing import assert_task_contract

    host = get_plugin_manager()
    task = host.task(TASK)
    assert type(task).__module__.startswith("piti_task_example")
    assert host.owners["tasks"][TASK] == "example"
    assert_task_contract(task, resolve_config(preset="tiny", extra_sections=host.task_sections()))


@pytest.mark.slow
def test_train_on_the_toy_world_then_sample(piti_home, tmp_path, clean_plugin_env):
    from tests.helpers import one_torch_thread

    run = tmp_path / "run"
    runner = CliRunner()
    with one_torch_thread():
        res = runner.invoke(cli, ["train", "--task", TASK, "--preset", "tiny", "--out", str(run), "--device", "cpu",
                                  "--no-preview", *_sets(*FEW_STEPS, f"{TASK}.luma=bt709")])
        assert res.exit_code == 0, res.output
        meta = json.loads((run / "run.json").read_text())
        assert meta["task"] == TASK and meta["cond_channels"] == 1
        assert meta["stages"] == ["stage1", "stage1-cont", "stage2", "upsampler"]
        assert (run / "base.safetensors").is_file() and (run / "upsampler.safetensors").is_file()
        assert json.loads((run / "config.json").read_text())["tasks"][TASK] == {"luma": "bt709"}  # its own section

        photo = tmp_path / "photo.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)).save(photo)
        out = tmp_path / "samples"
        res = runner.invoke(cli, ["sample", "--run", str(run), "--input", str(photo), "--out", str(out),
                                  "--steps", "2", "--upsampler-steps", "2", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    [entry] = json.loads(res.stdout)["outputs"]
    assert Image.open(entry["image"]).size == (64, 64)
    assert Image.open(entry["condition"]).size == (64, 64)  # the luminance condition, via the task's visualize()
