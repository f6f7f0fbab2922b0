"""Condition inputs a task plugin controls: what ``preprocess`` returns is checked against its
ConditionSpec (the plugin is blamed, not the user's file), ``piti sample --input DIR`` takes the files the
task reads, and the demo shows the input widget the task asks for.

The plugin under test is tests/plugins/inputs_plugin.py, seen by the CLI as an installed entry point.
"""

import io
import json
import threading
import urllib.request

import numpy as np
import pytest
from PIL import Image

from piti_core import plugins as plugin_module
from piti_core.errors import PluginError
from piti_core.tasks import ConditionSpec, Task
from piti_core.testing import FakeEntryPoints
from tests.helpers import one_torch_thread, random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot
from tests.plugins.inputs_plugin import BuggyTask, KeypointsTask

DIST, VERSION = "piti-task-inputs", "1.2.0"
FAST = ["--steps", "2", "--batch-size", "2"]


@pytest.fixture(scope="module", autouse=True)
def installed(piti_home):
    """inputs_plugin as an installed plugin next to the real ones, for the whole module."""
    mp = pytest.MonkeyPatch()
    fake = FakeEntryPoints(keep_installed=True).add("inputstest", "tests.plugins.inputs_plugin", dist=DIST,
                                                    version=VERSION)
    mp.setattr(plugin_module, "entry_points_for_group", fake)
    plugin_module.reset_plugin_manager()
    with one_torch_thread():
        yield plugin_module.get_plugin_manager()
    mp.undo()
    plugin_module.reset_plugin_manager()


@pytest.fixture(scope="module")
def buggy_run(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("buggy") / "run", "buggy", upsampler=False)[0]


@pytest.fixture(scope="module")
def keypoints_run(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("keypoints") / "run", "keypoints", upsampler=False)[0]


def _sketch(path):
    arr = np.full((40, 40), 255, np.uint8)
    arr[10:12, 5:35] = 0
    Image.fromarray(arr).save(path)
    return path


def _keypoints(path, points):
    path.write_text(json.dumps({"points": points}))
    return path


# ------------------------------------------------------------------ preprocess() checked against the spec
BUGS = {
    "wrong shape": ("shape", ["returned shape (1, 3, 32, 32)", "(1, 1, 64, 64)"]),
    "no batch dimension": ("unbatched", ["returned shape (1, 64, 64)", "(1, 1, 64, 64)"]),
    "values out of range": ("range", ["values in [-3", "[-1.0, 1.0]"]),
    "NaN values": ("nan", ["nan"]),
    "integer dtype": ("dtype", ["dtype torch.int64", "float"]),
    "not a tensor": ("numpy", ["numpy.ndarray", "tensor"]),
}


@pytest.mark.parametrize("case", list(BUGS))
def test_a_broken_preprocess_blames_the_plugin(buggy_run, tmp_path, monkeypatch, case):
    bug, words = BUGS[case]
    monkeypatch.setattr(BuggyTask, "bug", bug)
    folder = tmp_path / "in"
    folder.mkdir()
    _sketch(folder / "s.png")
    before = snapshot(folder, buggy_run)
    result = invoke("sample", "--run", buggy_run, "--input", folder, "--out", tmp_path / "out", *FAST)
    line = assert_clean_failure(result, 1, watched=before, watched_paths=[folder, buggy_run],
                                mentions=["task 'buggy'", f"({DIST} {VERSION})", "preprocess()", "s.png",
                                          "ConditionSpec", "bug in the plugin", *words])
    assert line.startswith("Error: task 'buggy'"), line
    assert not (tmp_path / "out").exists()


def test_a_working_preprocess_passes_the_check(buggy_run, tmp_path, monkeypatch):
    monkeypatch.setattr(BuggyTask, "bug", None)
    _sketch(tmp_path / "s.png")
    result = invoke("sample", "--run", buggy_run, "--input", tmp_path / "s.png", "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "s.png").is_file()


# ------------------------------------------------------------------ --input DIR: the files the task reads
def test_a_folder_gives_the_files_the_task_reads(keypoints_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _keypoints(folder / "a.json", [[0.1, 0.2], [0.5, 0.5]])
    _keypoints(folder / "b.JSON", [[0.9, 0.9]])
    _sketch(folder / "photo.png")  # not a keypoints file: left alone
    (folder / "notes.txt").write_text("hello")
    result = invoke("sample", "--run", keypoints_run, "--input", folder, "--out", tmp_path / "out", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert [o["input"] for o in outputs] == [str(folder / "a.json"), str(folder / "b.JSON")]
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "b_condition.png").is_file()


def test_a_folder_without_such_files_names_what_the_task_reads(keypoints_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _sketch(folder / "photo.png")
    before = snapshot(folder)
    result = invoke("sample", "--run", keypoints_run, "--input", folder, "--out", tmp_path / "out", *FAST)
    assert_clean_failure(result, 1, mentions=["no condition files", "keypoints", ".json"], watched=before,
                         watched_paths=[folder])


class _Legacy(Task):
    """A task written before input_suffixes and input_kind existed."""

    name = "legacy"

    def condition_spec(self, cfg):
        return ConditionSpec(channels=3)


def test_a_task_that_declares_nothing_keeps_the_defaults(installed, tmp_path):
    from piti_core.config import resolve_config
    from piti_core.generate import list_inputs

    cfg = resolve_config(preset="tiny", extra_sections=installed.task_sections())
    for name in ("a.png", "b.npy", "c.TIF", "d.json", "e.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(tmp_path, _Legacy(), cfg)] == ["a.png", "b.npy", "c.TIF"]  # today's list
    assert [p.name for p in list_inputs(tmp_path, installed.task("keypoints"), cfg)] == ["d.json"]
    assert _Legacy().input_kind(cfg) == "image"  # today's guess: three channels, no palette


def test_the_built_in_tasks_declare_what_they_read(installed, piti_home):
    from piti_core.config import resolve_config

    cfg = resolve_config(preset="tiny", extra_sections=installed.task_sections())
    suffixes = {name: set(installed.task(name).input_suffixes(cfg)) for name in ("sketch", "mask", "depth", "normal")}
    assert ".npy" not in suffixes["sketch"] and ".webp" in suffixes["sketch"]
    assert ".npy" not in suffixes["mask"] and ".jpg" not in suffixes["mask"]  # a JPEG smears a label map's colours
    assert {".npy", ".png", ".tif"} <= suffixes["depth"] and ".jpg" not in suffixes["depth"]
    assert {".npy", ".png"} <= suffixes["normal"]
    kinds = {name: installed.task(name).input_kind(cfg) for name in ("sketch", "depth", "normal", "depth-normal")}
    assert kinds == {"sketch": "sketch", "depth": "upload", "normal": "upload", "depth-normal": "upload"}


# ------------------------------------------------------------------ the demo asks the task
@pytest.fixture
def demo(request):
    from piti_core.demo.server import DemoApp, make_server

    app = DemoApp(request.getfixturevalue(request.param), device="cpu")
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield app, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    app.close()


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as res:
        return json.loads(res.read())


@pytest.mark.parametrize("demo", ["keypoints_run"], indirect=True)
def test_the_demo_shows_the_widget_the_task_declares(demo):
    _, base = demo
    info = _get(base + "/api/info")
    assert info["task"] == "keypoints" and info["kind"] == "upload" and info["suffixes"] == [".json"]


@pytest.mark.parametrize("demo", ["buggy_run"], indirect=True)
def test_a_task_that_declares_no_widget_keeps_the_guess(demo):
    _, base = demo
    assert _get(base + "/api/info")["kind"] == "sketch"  # one channel, no palette: as before


@pytest.mark.parametrize("demo", ["buggy_run"], indirect=True)
def test_the_demo_blames_the_plugin_for_a_broken_preprocess(demo, monkeypatch):
    app, base = demo
    monkeypatch.setattr(BuggyTask, "bug", "shape")
    buf = io.BytesIO()
    Image.new("L", (40, 40), 255).save(buf, format="PNG")
    req = urllib.request.Request(f"{base}/api/generate?steps=2", data=buf.getvalue(), method="POST",
                                 headers={"X-Piti-Token": app.token})
    with urllib.request.urlopen(req, timeout=60) as res:
        job = json.loads(res.read())["job"]
    for _ in range(2000):
        status = _get(f"{base}/api/jobs/{job}")
        if status["state"] in ("done", "error"):
            break
        threading.Event().wait(0.05)
    assert status["state"] == "error", status
    assert "bug in the plugin" in status["error"] and "the uploaded file" in status["error"], status["error"]
    assert str(app.tmp) not in status["error"]


def test_an_unknown_widget_is_a_plugin_error(keypoints_run, monkeypatch):
    from piti_core.demo.server import DemoApp

    monkeypatch.setattr(KeypointsTask, "input_kind", lambda self, cfg: "wheel")
    with pytest.raises(PluginError) as err:
        DemoApp(keypoints_run, device="cpu")
    assert all(w in str(err.value) for w in ("keypoints", "wheel", "sketch, labels, image, upload", DIST))


@pytest.mark.parametrize("declared, want", [((".JSON", "npz"), (".json", ".npz")), ("json", None), ((), None),
                                            ((".png", 3), None)])
def test_declared_suffixes_are_normalised_or_blamed_on_the_plugin(installed, monkeypatch, declared, want):
    from piti_core.config import resolve_config
    from piti_core.generate import input_suffixes

    cfg = resolve_config(preset="tiny", extra_sections=installed.task_sections())
    task = installed.task("keypoints")
    monkeypatch.setattr(KeypointsTask, "input_suffixes", lambda self, cfg: declared)
    if want is not None:
        assert input_suffixes(task, cfg) == want
        return
    with pytest.raises(PluginError) as err:
        input_suffixes(task, cfg)
    assert all(w in str(err.value) for w in ("keypoints", DIST, "input_suffixes()", "bug in the plugin"))


@pytest.mark.parametrize("attr, value", [("input_kind", "hologram"), ("input_suffixes", ())])
def test_contract_check_catches_a_bad_input_declaration(attr, value):
    from piti_core.config import resolve_config
    from piti_core.errors import PluginError
    from piti_core.testing import assert_task_contract
    from piti_plugins.sketch.task import SketchTask

    class Odd(SketchTask):
        name = "odd"

    setattr(Odd, attr, lambda self, cfg: value)
    with pytest.raises(PluginError, match="odd"):
        assert_task_contract(Odd(), resolve_config(preset="tiny"))


def test_a_typo_in_alignment_directions_is_refused_at_registration(plugin_host_factory, fake_entry_points):
    from piti_core.testing import make_plugin_module

    module = make_plugin_module("piti_test_typo_directions", """
from piti_core.contract import hookimpl
from piti_plugins.sketch.task import SketchTask

class Typo(SketchTask):
    name = "typo"
    alignment_directions = {"edge_f1": "Higher"}

@hookimpl
def register_tasks(register):
    register(Typo())
""")
    fake_entry_points.add("typo", module)
    host = plugin_host_factory()
    assert "typo" not in host.tasks
    assert "alignment_directions" in host.records["typo"].message and "'Higher'" in host.records["typo"].message


def test_eval_blames_a_task_whose_build_dataset_is_not_a_paired_dataset(tmp_path, fake_entry_points):
    from piti_core.plugins import get_plugin_manager
    from piti_core.testing import make_plugin_module

    module = make_plugin_module("piti_test_odd_dataset", """
from piti_core.contract import hookimpl
from piti_plugins.sketch.task import SketchTask

class OddData(SketchTask):
    name = "odd-data"

    def build_dataset(self, cfg, split, **kwargs):
        return [{"cond": None}] * 4

@hookimpl
def register_tasks(register):
    register(OddData())
""")
    fake_entry_points.keep_installed = True
    fake_entry_points.add("odd-data", module)
    get_plugin_manager()
    run = random_run(tmp_path / "run", "sketch", upsampler=False)[0]
    meta = json.loads((run / "run.json").read_text())
    meta["task"] = "odd-data"
    meta.pop("plugins", None)
    (run / "run.json").write_text(json.dumps(meta))
    before = snapshot(run)
    res = invoke("eval", "--run", run, "--out", tmp_path / "eval", "--no-fid", "--n", "2")
    assert_clean_failure(res, 1, mentions=["odd-data", "PairedDataset"], watched=before, watched_paths=[run])
