"""The example third-party plugin (docs/examples/piti-task-example), pip-installed as .ci/run does, and
the same source loaded uninstalled with ``piti -p MODULE``.

The plugin brings its own encoder (a conv stack pooled to tokens), its own data field (colour hints
read from ``hints/<stem>.json``, derived from the photo where a data set has none, as the toy world)
and its own metric (``chroma-error``, lower is better). Through the CLI and with no change to piti it
must train on the toy world, sample, evaluate (its metric in metrics.json with its direction) and
train few-shot; ``piti data check`` and training read a data set's hints files with its reader.
"""

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hostile.harness import assert_clean_failure, invoke, snapshot

DIST = "piti-task-example"
TASK = "colorize"
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / DIST
DEV = "colorize_dev"  # the example's package copied under another name, never installed


def _installed_version():
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


pytestmark = pytest.mark.skipif(
    _installed_version() is None,
    reason=f"the example plugin is not installed: pip install ./docs/examples/{DIST} (.ci/run does)")

# a few steps per stage; the decoders keep the tiny sizes (they must match the shipped prior), the
# task's own encoder is sized by its own options
FEW_STEPS = ["train.stage1_steps=2", "train.stage1_cont_steps=1", "train.stage2_steps=1", "train.upsampler_steps=1",
             "train.batch_size=2", "train.perceptual=none", "data.toyworld_samples=8", "data.val_fraction=0.5",
             f"tasks.{TASK}.channels=8", f"tasks.{TASK}.grid=2"]
FEW_SHOT = ["fewshot.shots=2", "fewshot.holdout=2", "fewshot.holdout_from=val"]
PLUGIN_VARS = ("PITI_DISABLE_PLUGINS", "PITI_LOAD_PLUGINS", "PITI_STRICT_PLUGINS")


def _sets(*pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def _train(out, *sets, plugin_args=()):
    from tests.helpers import one_torch_thread

    with one_torch_thread():
        res = invoke(*plugin_args, "train", "--task", TASK, "--preset", "tiny", "--out", out, "--device", "cpu",
                     "--no-preview", *_sets(*FEW_STEPS, *sets))
    assert res.exit_code == 0, res.output + res.stderr
    return out


def _sample(run, photo, out, plugin_args=()):
    res = invoke(*plugin_args, "sample", "--run", run, "--input", photo, "--out", out, "--steps", "2",
                 "--upsampler-steps", "2", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output + res.stderr
    [entry] = json.loads(res.stdout)["outputs"]
    return entry


def _eval(run, out, plugin_args=()):
    res = invoke(*plugin_args, "eval", "--run", run, "--out", out, "--steps", "2", "--upsampler-steps", "2",
                 "--batch-size", "2", "--n", "2", "--no-fid", "--metric", "chroma-error", "--metric", "alignment",
                 "--json")
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads((Path(out) / "metrics.json").read_text())


def _photo_with_hints(folder, size=(40, 48), hint=(5, 6, [255, 0, 0])):
    """A grey photo ``folder/photo.png`` and ``folder/hints/photo.json`` with one red hint."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (128, 128, 128)).save(folder / "photo.png")
    (folder / "hints").mkdir(exist_ok=True)
    x, y, rgb = hint
    (folder / "hints" / "photo.json").write_text(json.dumps(
        {"width": size[0], "height": size[1], "points": [{"x": x, "y": y, "rgb": rgb}]}))
    return folder / "photo.png"


def _hints_dataset(root, n=6, size=32):
    """A user's data set: photos and their hints files (a few pixels of each photo's own colours)."""
    (root / "images").mkdir(parents=True)
    (root / "hints").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(photo).save(root / "images" / f"s{i}.png")
        points = [{"x": int(x), "y": int(y), "rgb": [int(c) for c in photo[y, x]]}
                  for x, y in rng.integers(0, size, (3, 2))]
        (root / "hints" / f"s{i}.json").write_text(json.dumps({"width": size, "height": size, "points": points}))
    return root


def _plugin_env(mp, *, disable=None):
    from piti_core.plugins import reset_plugin_manager

    for var in PLUGIN_VARS:
        mp.delenv(var, raising=False)
    if disable:
        mp.setenv("PITI_DISABLE_PLUGINS", disable)
    reset_plugin_manager()


# ------------------------------------------------------------------------------------- installed
@pytest.fixture(scope="module")
def installed_run(piti_home, tmp_path_factory):
    """One short training of the installed plugin on the toy world (shared by the tests below)."""
    from piti_core.plugins import reset_plugin_manager

    with pytest.MonkeyPatch.context() as mp:
        _plugin_env(mp)
        run = _train(tmp_path_factory.mktemp("installed") / "run", f"tasks.{TASK}.luma=bt709")
    reset_plugin_manager()
    return run


def test_plugins_lists_it_under_its_distribution(clean_plugin_env):
    res = invoke("plugins", "--json")
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.stdout) if r["distribution"] == DIST]
    assert len(rows) == 1, f"no plugin from {DIST} in {res.stdout}"
    row = rows[0]
    assert row["status"] == "ok", row["message"]
    assert row["name"] == "example" and row["module"] == "piti_task_example" and row["source"] == "entry-point"
    assert row["version"] == _installed_version()
    assert row["provides"] == {"tasks": [TASK], "metrics": ["chroma-error"]}


def test_task_and_its_field_pass_the_shared_contracts(clean_plugin_env):
    from piti_core.config import resolve_config
    from piti_core.contract import assert_field_contract, assert_task_contract
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    task = host.task(TASK)
    assert type(task).__module__.startswith("piti_task_example")
    assert host.owners["tasks"][TASK] == "example"
    assert_task_contract(task, resolve_config(preset="tiny", extra_sections=host.task_sections()))
    [hints] = [f for f in task.data_fields() if f.name != "image"]
    assert_field_contract(hints)


def test_trains_its_own_encoder_on_hints_derived_from_the_toy_world(installed_run, piti_home, clean_plugin_env):
    from piti_core.runs import load_run

    meta = json.loads((installed_run / "run.json").read_text())
    assert meta["task"] == TASK and meta["cond_channels"] == 5
    assert meta["stages"] == ["stage1", "stage1-cont", "stage2", "upsampler"]
    assert {k: meta["plugins"]["task"][k] for k in ("plugin", "distribution", "version")} == {
        "plugin": "example", "distribution": DIST, "version": _installed_version()}
    config = json.loads((installed_run / "config.json").read_text())
    assert config["tasks"][TASK] == {"luma": "bt709", "channels": 8, "grid": 2}  # its own section
    run = load_run(installed_run)
    for name in ("base", "upsampler"):
        encoder = run.models[name].encoder
        assert type(encoder).__name__ == "ConvTokenEncoder" and encoder.pool.output_size == 2, type(encoder)
    assert list((piti_home / "cache" / "conditions").glob("*/colorize-hints-*/*.npy"))  # hints from the photos


def test_samples_with_the_hints_beside_the_photo(installed_run, tmp_path, clean_plugin_env):
    folder = _photo_with_hints(tmp_path / "in").parent
    (folder / "notes.json").write_text("{}")  # not a photo: --input DIR leaves it alone
    entry = _sample(installed_run, folder, tmp_path / "out")
    assert Image.open(entry["image"]).size == (64, 64)
    condition = np.asarray(Image.open(entry["condition"]).convert("RGB")).reshape(-1, 3).astype(int)
    assert ((condition[:, 0] > 200) & (condition[:, 1] < 60)).any()  # the red hint, drawn by its visualize()
    assert (np.ptp(condition, axis=1) == 0).mean() > 0.9  # the rest: the grey luminance


def test_evaluates_with_its_metric_and_declared_direction(installed_run, tmp_path, clean_plugin_env):
    record = _eval(installed_run, tmp_path / "eval")
    assert record["metric_plugins"] == ["alignment", "chroma-error"]
    assert 0 <= record["metrics"]["chroma-error"] < 1
    assert record["metric_info"]["chroma-error"]["better"] == "lower"
    assert record["metric_info"]["luma_psnr"]["better"] == "higher"  # the task's alignment_directions


def test_trains_few_shot(piti_home, tmp_path, clean_plugin_env):
    run = _train(tmp_path / "fewshot", *FEW_SHOT)
    fewshot = json.loads((run / "fewshot.json").read_text())
    assert len(fewshot["train_stems"]) == 2 and len(fewshot["holdout_stems"]) == 2
    assert json.loads((run / "run.json").read_text())["cond_channels"] == 5


# ---------------------------------------------------------------------------- a user's hints files
def test_data_check_and_training_read_hints_files_with_the_plugin_reader(tmp_path, piti_home, clean_plugin_env):
    root = _hints_dataset(tmp_path / "ds")
    ok = invoke("data", "check", root, "--task", TASK)
    assert ok.exit_code == 0 and "hints" in ok.stdout, ok.stdout + ok.stderr
    run = _train(tmp_path / "run", f"data.root={root}", "train.stage1_cont_steps=0", "train.stage2_steps=0",
                 "train.upsampler_steps=0")
    assert (run / "base.safetensors").is_file()
    assert not list((piti_home / "cache" / "conditions").glob("ds-*/colorize-hints-*"))  # read, not derived

    (root / "hints" / "s3.json").write_text('{"width": 32, "height": 32, "points": [{"x": 40, "y": 1}]}')
    before = snapshot(root)
    bad = invoke("data", "check", root, "--task", TASK)
    assert bad.exit_code == 1 and [line for line in bad.stdout.splitlines() if "s3.json" in line]
    res = invoke("train", "--task", TASK, "--preset", "tiny", "--out", tmp_path / "bad-run", "--device", "cpu",
                 "--no-preview", *_sets(*FEW_STEPS, f"data.root={root}"))
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "s3.json" in errors[0] and "points[0]" in errors[0], res.stderr
    assert snapshot(root) == before and not (tmp_path / "bad-run" / "run.json").exists()


# ----------------------------------------------------------------------------- -p MODULE, uninstalled
@pytest.fixture(scope="module")
def dev_source(tmp_path_factory):
    """The example's package source copied to a folder on no path, as the module ``colorize_dev``."""
    folder = tmp_path_factory.mktemp("dev")
    shutil.copytree(EXAMPLE / "piti_task_example", folder / DEV, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture
def dev_env(dev_source, monkeypatch):
    """The installed example blocked, the copy importable: only ``-p colorize_dev`` provides the task."""
    monkeypatch.syspath_prepend(str(dev_source))
    _plugin_env(monkeypatch, disable="example")
    yield ("-p", DEV)
    from piti_core.plugins import reset_plugin_manager

    reset_plugin_manager()


@pytest.fixture(scope="module")
def dev_run(piti_home, dev_source, tmp_path_factory):
    """One short few-shot training through ``piti -p colorize_dev`` (shared by the tests below)."""
    from piti_core.plugins import reset_plugin_manager

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(dev_source))
        _plugin_env(mp, disable="example")
        run = _train(tmp_path_factory.mktemp("dev") / "run", *FEW_SHOT, plugin_args=("-p", DEV))
    reset_plugin_manager()
    return run


def test_p_module_provides_the_task_and_metric_to_every_command(dev_env):
    res = invoke(*dev_env, "plugins", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows[DEV]["source"] == "option" and rows[DEV]["status"] == "ok", rows[DEV]
    assert rows[DEV]["provides"] == {"tasks": [TASK], "metrics": ["chroma-error"]}
    assert rows["example"]["status"] != "ok"  # the installed copy is blocked
    tasks = json.loads(invoke(*dev_env, "tasks", "--json", "--preset", "tiny").stdout)
    assert {t["task"]: t["channels"] for t in tasks}[TASK] == 5
    from piti_core.plugins import reset_plugin_manager

    reset_plugin_manager()  # a new process: nothing loaded by the -p of the commands above
    without = invoke("tasks", "--json", "--preset", "tiny")
    assert TASK not in {t["task"] for t in json.loads(without.stdout)}


def test_p_module_trains_few_shot_samples_and_evaluates(dev_run, dev_env, tmp_path):
    from piti_core.plugins import get_plugin_manager
    from piti_core.runs import load_run

    meta = json.loads((dev_run / "run.json").read_text())
    assert meta["plugins"]["task"]["module"] == DEV and meta["plugins"]["task"]["distribution"] is None
    assert (dev_run / "fewshot.json").is_file()
    get_plugin_manager().load_module(DEV)  # what -p does
    assert type(load_run(dev_run).models["base"].encoder).__module__ == f"{DEV}.encoder"

    entry = _sample(dev_run, _photo_with_hints(tmp_path / "in"), tmp_path / "out", plugin_args=dev_env)
    assert Image.open(entry["image"]).size == (64, 64)
    record = _eval(dev_run, tmp_path / "eval", plugin_args=dev_env)
    assert record["metric_info"]["chroma-error"]["better"] == "lower" and record["metrics"]["chroma-error"] >= 0


def test_p_run_without_its_module_says_to_add_it(dev_run, dev_env, tmp_path):
    from piti_core.plugins import reset_plugin_manager

    reset_plugin_manager()
    photo = _photo_with_hints(tmp_path / "in")
    res = invoke("sample", "--run", dev_run, "--input", photo, "--out", tmp_path / "out")
    assert_clean_failure(res, 1, mentions=[TASK, f"-p {DEV}"])
