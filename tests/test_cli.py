"""The click CLI through CliRunner: exit codes, --json, errors, plugins."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.testing import make_plugin_module


@pytest.fixture
def run(clean_plugin_env):
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def test_version_and_help(run):
    res = run("--version")
    assert res.exit_code == 0 and res.output.startswith("piti ")
    res = run("--help")
    assert res.exit_code == 0 and "plugins" in res.output and "tasks" in res.output


def test_plugins_json_lists_builtins_under_piti(run):
    res = run("plugins", "--json", "--all")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    for name in ("mask", "sketch", "geometry"):
        assert rows[name]["distribution"] == "piti" and rows[name]["status"] == "ok"
    assert "mask" in rows["mask"]["provides"]["tasks"]
    res = run("plugins", "--json")  # without --all built-ins are hidden
    assert [r for r in json.loads(res.output) if r["distribution"] == "piti"] == []


def test_plugins_table_and_check(run, fake_entry_points):
    fake_entry_points.keep_installed = True
    fake_entry_points.add("broken", "piti_test_missing_mod_cli", dist="piti-task-broken")
    res = run("plugins", "--all")
    assert res.exit_code == 0
    assert "broken" in res.output and "error" in res.output
    assert run("plugins", "--check").exit_code == 1


def test_tasks_json(run):
    res = run("tasks", "--json", "--preset", "tiny")
    assert res.exit_code == 0, res.output
    rows = {r["task"]: r for r in json.loads(res.output)}
    assert rows["sketch"]["channels"] == 1 and rows["depth-normal"]["channels"] == 6


def test_config_print_and_overrides(run):
    res = run("config", "--preset", "tiny", "--set", "train.lr=0.01")
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["preset"] == "tiny" and data["train"]["lr"] == 0.01
    res = run("tasks", "--preset", "tiny", "--print-config")
    assert json.loads(res.output)["preset"] == "tiny"


def test_bad_config_key_is_usage_error_one_line(run):
    res = run("config", "--set", "train.nope=1")
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "unknown config key 'train.nope'" in lines[0] and "Traceback" not in res.output


def test_task_section_override_through_cli(run):
    """`piti config` prints task options under "tasks"; --set takes today's form and the namespaced one."""
    res = run("config", "--set", "sketch.threshold=0.3")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["tasks"]["sketch"]["threshold"] == 0.3 and "sketch" not in data
    res = run("config", "--set", "tasks.sketch.threshold=0.4")
    assert res.exit_code == 0 and json.loads(res.output)["tasks"]["sketch"]["threshold"] == 0.4


def test_task_section_in_a_toml_file_both_forms(run, tmp_path):
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    new.write_text("[tasks.sketch]\nthreshold = 0.25\n")
    old.write_text("[sketch]\nthreshold = 0.35\n")
    for path, value in ((new, 0.25), (old, 0.35)):
        res = run("config", "--config", str(path))
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["tasks"]["sketch"]["threshold"] == value
    res = run("config", "--set", "tasks.sketchh.threshold=0.3")
    assert res.exit_code == 2 and "unknown config key 'tasks.sketchh'" in res.output


def test_unknown_task_lists_valid_ones(run):
    import click

    from piti_cli.options import task_option

    @task_option()
    @click.command("needs-task")
    def needs_task(task):
        click.echo(task)

    cli.add_command(needs_task)
    try:
        res = run("needs-task", "--task", "sketch")
        assert res.exit_code == 0 and res.output.strip() == "sketch"
        res = run("needs-task", "--task", "sktech")
        assert res.exit_code == 2
        assert "unknown task 'sktech'; valid tasks:" in res.output and "sketch" in res.output
    finally:
        cli.commands.pop("needs-task")


def test_domain_error_exit_1_and_verbose_traceback(run):
    import click

    from piti_core.errors import DataError

    @click.command("fail")
    def fail():
        raise DataError("data/x.png: truncated image")

    cli.add_command(fail)
    try:
        res = run("fail")
        assert res.exit_code == 1 and "Error: data/x.png: truncated image" in res.output
        assert "Traceback" not in res.output
        res = CliRunner().invoke(cli, ["--verbose", "fail"])
        assert res.exit_code == 1 and "Traceback" in res.output
    finally:
        cli.commands.pop("fail")


def test_unexpected_exception_is_one_line(run):
    import click

    @click.command("boom")
    def boom():
        raise ZeroDivisionError("oops")

    cli.add_command(boom)
    try:
        res = CliRunner().invoke(cli, ["boom"])
        assert res.exit_code == 1 and "internal error: ZeroDivisionError: oops" in res.output
        assert "Traceback" not in res.output
    finally:
        cli.commands.pop("boom")


def test_dash_p_loads_plugin_with_command(run):
    make_plugin_module("piti_test_cli_plugin", '''
import click
from piti_core.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("hello")
    def hello():
        click.echo("hello from plugin")
''')
    res = run("-p", "piti_test_cli_plugin", "hello")
    assert res.exit_code == 0 and res.output.strip() == "hello from plugin"
    res = run("-p", "piti_test_cli_plugin", "plugins", "--json")
    row = [r for r in json.loads(res.output) if r["name"] == "piti_test_cli_plugin"][0]
    assert row["source"] == "option" and row["provides"] == {"commands": ["hello"]}


def test_unknown_command_is_usage_error(run):
    res = CliRunner().invoke(cli, ["nope"])
    assert res.exit_code == 2


def test_help_does_not_import_torch():
    code = ("import sys; from piti_cli.main import cli\n"
            "try:\n    cli(['--help'], prog_name='piti')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr
