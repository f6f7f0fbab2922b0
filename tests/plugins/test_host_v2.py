"""`piti -p MODULE`: an uninstalled plugin module's tasks, samplers, metrics and commands are visible to every
command, and a module that fails to import is reported (fatal with PITI_STRICT_PLUGINS=1)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from tests.hostile.harness import assert_clean_failure, invoke, snapshot

MODULE = "piti_test_dash_p_plugin"
SOURCE = '''
import attrs
import click

from piti_core.hookspecs import hookimpl
from piti_core.tasks import ConditionSpec, Task

CALLS = []


@attrs.frozen
class HaloOptions:
    factor: int = 4


class HaloTask(Task):
    name = "halo"
    description = "a task from a -p module"
    sources = ("image",)
    config_class = HaloOptions

    def condition_spec(self, cfg):
        return ConditionSpec(channels=3, value_range=(-1.0, 1.0))


def sample_halo(model_fn, x, schedule, *, generator=None, callback=None, **kw):
    from piti_core.diffusion.samplers import sample_ddim

    CALLS.append(tuple(x.shape))
    return sample_ddim(model_fn, x, schedule, generator=generator, callback=callback)


@hookimpl
def register_tasks(register):
    register(HaloTask())


@hookimpl
def register_samplers(register):
    register("halo-ddim", sample_halo)


@hookimpl
def register_metrics(register):
    register("halo-metric", lambda samples, batch, cfg: {"halo-metric": 1.0})


@hookimpl
def register_commands(cli):
    @cli.command("halo-hello")
    def hello():
        """Say hello from a -p module."""
        click.echo("hello from halo")
'''


@pytest.fixture
def plugin_module(tmp_path, clean_plugin_env):
    """The plugin module as a file on sys.path (not installed, no entry point)."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(SOURCE)
    clean_plugin_env.syspath_prepend(str(folder))
    yield MODULE
    sys.modules.pop(MODULE, None)


def _ok(*args):
    res = invoke("-p", MODULE, *args)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tasks_and_config_see_the_modules_task(plugin_module):
    rows = {r["task"]: r for r in json.loads(_ok("tasks", "--json", "--preset", "tiny").stdout)}
    assert rows["halo"]["plugin"] == MODULE and rows["halo"]["channels"] == 3
    cfg = json.loads(_ok("train", "--task", "halo", "--print-config", "--set", "tasks.halo.factor=2").stdout)
    assert cfg["tasks"]["halo"] == {"factor": 2}
    cfg = json.loads(_ok("config", "--set", "halo.factor=3").stdout)  # today's form too
    assert cfg["tasks"]["halo"] == {"factor": 3}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plugins_lists_what_the_module_provides(plugin_module):
    rows = {r["name"]: r for r in json.loads(_ok("plugins", "--json").stdout)}
    record = rows[MODULE]
    assert record["source"] == "option" and record["status"] == "ok"
    assert record["provides"] == {"tasks": ["halo"], "samplers": ["halo-ddim"], "metrics": ["halo-metric"],
                                  "commands": ["halo-hello"]}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_modules_command_runs(plugin_module):
    assert _ok("halo-hello").stdout.strip() == "hello from halo"
    assert "halo-hello" in _ok("--help").stdout


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sample_with_the_modules_sampler(plugin_module, tmp_path):
    from tests.helpers import random_run

    run = random_run(tmp_path / "run", "sketch", upsampler=False)[0]
    arr = np.full((40, 40), 255, np.uint8)
    arr[20, 5:35] = 0
    Image.fromarray(arr).save(tmp_path / "s.png")
    _ok("sample", "--run", run, "--input", tmp_path / "s.png", "--out", tmp_path / "out", "--sampler", "halo-ddim",
        "--steps", "2")
    assert sys.modules[MODULE].CALLS == [(1, 3, 32, 32)]  # the base model's sampler only
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())["settings"]
    assert settings["sampler"] == "halo-ddim"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_without_dash_p_the_task_is_unknown(plugin_module):
    assert_clean_failure(invoke("train", "--task", "halo", "--print-config"), 2, mentions=["unknown task 'halo'"])


BROKEN = {
    "missing": None,  # no such module
    "syntax": "def broken(:\n",
    "raises": "raise RuntimeError('boom at import')\n",
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_module_that_fails_to_import_is_reported(case, tmp_path, clean_plugin_env):
    name = f"piti_test_dash_p_{case}"
    if BROKEN[case] is not None:
        (tmp_path / f"{name}.py").write_text(BROKEN[case])
        clean_plugin_env.syspath_prepend(str(tmp_path))
    before = snapshot(tmp_path)
    res = invoke("-p", name, "tasks", "--json")
    assert res.exit_code == 0, res.output  # reported and skipped: the built-in tasks still list
    assert "sketch" in {r["task"] for r in json.loads(res.stdout)}
    assert f"plugin '{name}'" in res.stderr and "import failed" in res.stderr
    from piti_core.plugins import reset_plugin_manager

    reset_plugin_manager()
    sys.modules.pop(name, None)
    res = invoke("-p", name, "tasks", env={"PITI_STRICT_PLUGINS": "1"})
    assert_clean_failure(res, 1, mentions=[f"plugin '{name}'", "import failed"], watched=before,
                         watched_paths=[tmp_path])


def test_dash_p_of_an_installed_plugin_module_is_a_silent_no_op():
    from tests.hostile.harness import invoke

    res = invoke("-p", "piti_plugins.sketch", "tasks", "--json", "--preset", "tiny")
    assert res.exit_code == 0 and res.stderr.strip() == "", res.stderr
    assert "sketch" in {row["task"] for row in json.loads(res.stdout)}
