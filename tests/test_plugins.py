"""Plugin loading: good, broken, blocked, duplicated, strict."""

import logging

import pytest

from piti_core.errors import PluginError
from piti_core.plugins import PluginHost, get_plugin_manager, reset_plugin_manager
from piti_core.testing import make_plugin_module

GOOD = '''
from piti_core.hookspecs import hookimpl
from piti_core.tasks import ConditionSpec, Task

class GoodTask(Task):
    name = "good"
    description = "a test task"
    sources = ("edges",)
    def condition_spec(self, cfg):
        return ConditionSpec(channels=1)
    def encode(self, sample, cfg):
        return sample["edges"] * 2 - 1
    def preprocess(self, source, cfg):
        raise NotImplementedError

@hookimpl
def register_tasks(register):
    register(GoodTask())

@hookimpl
def register_samplers(register):
    register("good-sampler", lambda model_fn, x, schedule, **kw: x)
'''


def _module(name, source=GOOD):
    return make_plugin_module(name, source)


def test_good_plugin_registers_task_and_sampler(fake_entry_points, plugin_host_factory):
    fake_entry_points.add("good", _module("piti_test_good"), dist="piti-task-good", version="1.2")
    host = plugin_host_factory()
    rec = host.records["good"]
    assert rec.status == "ok" and rec.distribution == "piti-task-good" and rec.version == "1.2"
    assert rec.provides == {"tasks": ["good"], "samplers": ["good-sampler"]}
    assert host.task("good").name == "good"
    assert "good-sampler" in host.samplers


def test_import_error_is_recorded_and_skipped(fake_entry_points, plugin_host_factory, caplog):
    fake_entry_points.add("good", _module("piti_test_good2"))
    fake_entry_points.add("broken", "piti_test_does_not_exist_anywhere")
    with caplog.at_level(logging.WARNING, logger="piti"):
        host = plugin_host_factory()
    assert host.records["broken"].status == "error"
    assert "import failed" in host.records["broken"].message
    assert "good" in host.tasks
    warnings = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_raising_hook_rolls_back_everything_it_registered(fake_entry_points, plugin_host_factory):
    source = GOOD + '''
@hookimpl
def register_metrics(register):
    raise RuntimeError("metric setup exploded")
'''
    fake_entry_points.add("half", _module("piti_test_half", source))
    host = plugin_host_factory()
    rec = host.records["half"]
    assert rec.status == "error" and "exploded" in rec.message
    assert "good" not in host.tasks and "good-sampler" not in host.samplers
    assert not host.pm.has_plugin("half")


def test_misspelled_hook_is_an_error(fake_entry_points, plugin_host_factory):
    source = '''
from piti_core.hookspecs import hookimpl
@hookimpl
def register_task(register):   # missing "s"
    pass
'''
    fake_entry_points.add("typo", _module("piti_test_typo", source))
    host = plugin_host_factory()
    assert host.records["typo"].status == "error"
    assert "unknown hook" in host.records["typo"].message
    assert "register_task" in host.records["typo"].message


def test_duplicate_task_names_name_both_distributions(fake_entry_points, plugin_host_factory):
    fake_entry_points.add("first", _module("piti_test_dup1"), dist="piti-task-one")
    fake_entry_points.add("second", _module("piti_test_dup2"), dist="piti-task-two")
    host = plugin_host_factory()
    assert host.records["first"].status == "ok"
    rec = host.records["second"]
    assert rec.status == "error"
    assert "piti-task-one" in rec.message and "piti-task-two" in rec.message
    assert host.owners["tasks"]["good"] == "first"


def test_strict_mode_reraises(fake_entry_points, plugin_host_factory, monkeypatch):
    monkeypatch.setenv("PITI_STRICT_PLUGINS", "1")
    fake_entry_points.add("broken", "piti_test_does_not_exist_anywhere")
    with pytest.raises(PluginError, match="broken"):
        plugin_host_factory()


def test_block_list(fake_entry_points, plugin_host_factory, monkeypatch):
    fake_entry_points.add("good", _module("piti_test_block1"))
    monkeypatch.setenv("PITI_DISABLE_PLUGINS", "good,other")
    host = plugin_host_factory()
    assert host.records["good"].status == "blocked"
    assert "good" not in host.tasks


def test_allow_list(fake_entry_points, plugin_host_factory, monkeypatch):
    fake_entry_points.add("good", _module("piti_test_allow1"))
    fake_entry_points.add("broken", "piti_test_does_not_exist_anywhere")
    monkeypatch.setenv("PITI_LOAD_PLUGINS", "good")
    host = plugin_host_factory()
    assert host.records["good"].status == "ok"
    assert host.records["broken"].status == "blocked"  # never imported


def test_block_by_distribution_name(fake_entry_points, plugin_host_factory, monkeypatch):
    fake_entry_points.add("good", _module("piti_test_block2"), dist="piti-task-good")
    monkeypatch.setenv("PITI_DISABLE_PLUGINS", "piti-task-good")
    assert plugin_host_factory().records["good"].status == "blocked"


def test_register_rejects_non_tasks_and_bad_names(piti_host):
    bad_type = '''
from piti_core.hookspecs import hookimpl
@hookimpl
def register_tasks(register):
    register("not a task")
'''
    rec = piti_host.add_plugin(_module("piti_test_badtype", bad_type), "badtype")
    assert rec.status == "error" and "expected a piti_core.tasks.Task" in rec.message
    bad_name = '''
from piti_core.hookspecs import hookimpl
@hookimpl
def register_samplers(register):
    register("Bad Name", lambda *a: None)
'''
    rec = piti_host.add_plugin(_module("piti_test_badname", bad_name), "badname")
    assert rec.status == "error" and "invalid sampler name" in rec.message


def test_load_module_option(piti_host):
    _module("piti_test_dash_p")
    rec = piti_host.load_module("piti_test_dash_p")
    assert rec.status == "ok" and rec.source == "option"
    assert "good" in piti_host.tasks
    missing = piti_host.load_module("piti_test_no_such_module_xyz")
    assert missing.status == "error"


def test_load_module_without_hooks_or_with_a_multiline_error_fails_in_one_line(piti_host, caplog, tmp_path,
                                                                               monkeypatch):
    _module("piti_test_no_hooks", "def register_tasks(register):\n    pass\n")  # not marked @hookimpl
    (tmp_path / "piti_test_two_lines.py").write_text("raise RuntimeError('first line\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="piti"):
        rec = piti_host.load_module("piti_test_no_hooks")
        assert rec.status == "error" and "defines no piti hooks" in rec.message
        assert not piti_host.pm.has_plugin("piti_test_no_hooks")
        rec = piti_host.load_module("piti_test_two_lines")
    assert rec.status == "error" and rec.message.endswith("first line second line")
    assert len(caplog.records) == 2 and all("\n" not in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("PITI_STRICT_PLUGINS", "1")
    _module("piti_test_no_hooks_strict", "VALUE = 1\n")
    with pytest.raises(PluginError, match="defines no piti hooks"):
        piti_host.load_module("piti_test_no_hooks_strict")


def test_unknown_task_lists_valid_ones(piti_host):
    piti_host.add_plugin(_module("piti_test_lookup"), "lookup")
    with pytest.raises(Exception, match="unknown task 'nope'; valid tasks: good"):
        piti_host.task("nope")


def test_register_commands_failure_rolls_back(piti_host):
    import click

    source = GOOD + '''
@hookimpl
def register_commands(cli):
    raise ValueError("no commands today")
'''
    piti_host.add_plugin(_module("piti_test_cmdfail", source), "cmdfail")
    assert "good" in piti_host.tasks
    group = click.Group("g")
    piti_host.add_commands(group)
    assert piti_host.records["cmdfail"].status == "error"
    assert "good" not in piti_host.tasks


def test_builtin_plugins_load_from_entry_points(clean_plugin_env):
    host = get_plugin_manager()
    assert get_plugin_manager() is host  # cached
    for name in ("mask", "sketch", "geometry"):
        rec = host.records[name]
        assert rec.status == "ok" and rec.distribution == "piti", rec
    assert {"mask", "sketch", "depth", "normal", "depth-normal"} <= set(host.tasks)
    reset_plugin_manager()
    assert get_plugin_manager() is not host


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, piti_core, piti_core.plugins, piti_core.config, piti_core.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_host_is_not_created_at_import():
    import piti_core.plugins as p

    assert isinstance(PluginHost(), PluginHost)
    assert hasattr(p, "get_plugin_manager")


@pytest.mark.parametrize("name", ["tasks", "train", "task"])
def test_task_names_of_the_config_namespace_are_reserved(name, clean_plugin_env):
    """[tasks.NAME] holds task options and today's top-level [NAME] is still read: a task may not be named
    like the namespace, a core section or a top-level key."""
    source = GOOD.replace('name = "good"', f'name = "{name}"').replace('"good-sampler"', '"other-sampler"')
    host = PluginHost()
    record = host.add_plugin(_module(f"piti_test_reserved_{name}", source), f"reserved-{name}")
    assert record.status == "error" and f"task name '{name}' is reserved" in record.message
    assert name not in host.tasks
