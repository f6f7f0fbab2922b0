"""``piti train --resume`` continues with the run's config.json, and refuses options that change it."""

import json

from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.config import resolve_config, save_config


def _run_with_config(tmp_path):
    from piti_core.plugins import get_plugin_manager

    cfg = resolve_config(preset="tiny", overrides=["train.lr=1e-4", "train.stage2_steps=7", f"data.root={tmp_path}"],
                         extra_sections=get_plugin_manager().task_sections())
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.json")
    return run


def test_resume_uses_the_saved_config_and_refuses_changes(tmp_path, monkeypatch):
    import piti_cli.commands.train as train_cmd

    seen = []
    monkeypatch.setattr(train_cmd, "run_training", lambda config, **kw: seen.append(config))
    run = _run_with_config(tmp_path)
    runner = CliRunner()

    plain = runner.invoke(cli, ["train", "--task", "sketch", "--resume", "--out", str(run)])
    assert plain.exit_code == 0, plain.output
    cfg = seen[-1]
    assert (cfg.train.lr, cfg.train.stage2_steps, cfg.data.root) == (1e-4, 7, str(tmp_path))

    changed = runner.invoke(cli, ["train", "--task", "sketch", "--resume", "--out", str(run), "--set", "train.lr=3e-4"])
    assert changed.exit_code == 2 and "train.lr" in changed.output and "Traceback" not in changed.output
    other_data = runner.invoke(cli, ["train", "--task", "sketch", "--resume", "--out", str(run), "--data",
                                     str(tmp_path / "elsewhere")])
    assert other_data.exit_code == 2 and "data.root" in other_data.output

    same = runner.invoke(cli, ["train", "--task", "sketch", "--resume", "--out", str(run), "--preset", "tiny",
                               "--set", "train.lr=1e-4", "--set", "train.stage2_steps=7", "--dtype", "fp32"])
    assert same.exit_code == 0, same.output
    assert seen[-1].train.dtype == "fp32" and seen[-1].data.root == str(tmp_path)  # dtype may change on resume


def test_without_resume_the_options_are_used(tmp_path, monkeypatch):
    import piti_cli.commands.train as train_cmd

    seen = []
    monkeypatch.setattr(train_cmd, "run_training", lambda config, **kw: seen.append(config))
    run = _run_with_config(tmp_path)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--out", str(run), "--set", "train.lr=3e-4"])
    assert res.exit_code == 0, res.output
    assert seen[-1].train.lr == 3e-4


def test_seed_sets_train_seed(tmp_path, monkeypatch):
    import piti_cli.commands.pretrain as pretrain_cmd
    import piti_cli.commands.train as train_cmd

    seen = []
    monkeypatch.setattr(train_cmd, "run_training", lambda config, **kw: seen.append(config))
    monkeypatch.setattr(pretrain_cmd, "run_training", lambda config, **kw: seen.append(config))
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--task", "sketch", "--out", str(tmp_path / "a"), "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert seen[-1].train.seed == 7
    res = runner.invoke(cli, ["pretrain", "--out", str(tmp_path / "b"), "--seed", "9"])
    assert res.exit_code == 0, res.output
    assert seen[-1].train.seed == 9
    printed = runner.invoke(cli, ["train", "--task", "sketch", "--seed", "5", "--print-config"])
    assert printed.exit_code == 0 and json.loads(printed.stdout)["train"]["seed"] == 5
    run = _run_with_config(tmp_path)  # saved with train.seed = 0
    changed = runner.invoke(cli, ["train", "--task", "sketch", "--resume", "--out", str(run), "--seed", "3"])
    assert changed.exit_code == 2 and "train.seed" in changed.output
