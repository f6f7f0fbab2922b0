"""`piti train` / `piti pretrain` after Ctrl-C: the command they print resumes the run; a finished run
resumed again has nothing left to train."""

import os
import shlex
import signal

import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from tests.hostile.harness import snapshot

from .conftest import TINY


def _sets(*pairs):
    return [a for kv in pairs for a in ("--set", kv)]


def _interrupt_at_first_step(monkeypatch):
    """Ctrl-C (SIGINT to this process) when the display shows the first step."""
    from piti_cli import training

    shown = training.Display.__call__

    def display(self, event):
        shown(self, event)
        if event.get("event") == "step" and not getattr(self, "interrupted", False):
            self.interrupted = True
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(training.Display, "__call__", display)


def _printed_resume(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if "resume with: " in line)
    args = shlex.split(line.split("resume with: ", 1)[1])
    assert args[0] == "piti"
    return args[1:]


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_the_printed_resume_command_finishes_the_run(command, data_dir, prior_dir, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "my run"  # a space: the printed command quotes it
    steps = ("train.stage1_steps=2", "train.stage1_cont_steps=1", "train.stage2_steps=1", "train.upsampler_steps=0",
             "train.pretrain_steps=2", "data.flip=false")
    first = ["train", "--task", "sketch", "--prior", str(prior_dir)] if command == "train" else ["pretrain"]
    _interrupt_at_first_step(monkeypatch)
    res = CliRunner().invoke(cli, [*first, "--data", str(data_dir), "--out", str(run), "--no-preview",
                                   *_sets(*TINY, *steps)])
    assert res.exit_code == 130, res.output
    resume = _printed_resume(res.stderr)
    assert resume == [command, "--out", str(run), "--resume", "--no-preview"]
    monkeypatch.undo()

    res = CliRunner().invoke(cli, resume)
    assert res.exit_code == 0, res.output
    assert "resuming" in res.stderr and res.stdout.strip().splitlines()[-1] == str(run)
    assert (run / "run.json").is_file()

    before = snapshot(run)
    again = CliRunner().invoke(cli, resume)
    assert again.exit_code == 0, again.output
    assert "nothing is left to train" in again.stderr and again.stdout.strip() == str(run)
    assert snapshot(run) == before  # a finished run is left as it is


def test_resume_names_the_stage_and_device_it_ran_with(data_dir, prior_dir, tmp_path, monkeypatch, one_thread):
    """What config.json does not record is repeated in the printed command."""
    run = tmp_path / "run"
    _interrupt_at_first_step(monkeypatch)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--prior", str(prior_dir), "--stage", "stage1",
                                   "--device", "cpu", "--data", str(data_dir), "--out", str(run),
                                   *_sets(*TINY, "train.stage1_steps=2", "train.sample_every=1")])
    assert res.exit_code == 130, res.output
    assert _printed_resume(res.stderr) == ["train", "--out", str(run), "--resume", "--stage", "stage1",
                                           "--device", "cpu"]


def test_overwrite_keeps_the_users_files(data_dir, prior_dir, tmp_path, one_thread):
    """--overwrite replaces piti's own entries of the folder and nothing else."""
    run = tmp_path / "run"
    (run / "photos").mkdir(parents=True)
    (run / "photos" / "a.png").write_bytes(b"\x89PNG not really")
    (run / "notes.txt").write_text("mine")
    (run / "config.json").write_text("{}")  # an earlier run's entry: replaced
    users = snapshot(run / "photos", run / "notes.txt")
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--prior", str(prior_dir), "--data", str(data_dir),
                                   "--out", str(run), "--overwrite", "--no-preview",
                                   *_sets(*TINY, "train.stage1_steps=1", "train.stage1_cont_steps=0",
                                          "train.stage2_steps=0", "train.upsampler_steps=0")])
    assert res.exit_code == 0, res.output
    assert snapshot(run / "photos", run / "notes.txt") == users
    assert (run / "run.json").is_file() and (run / "config.json").read_text() != "{}"


def test_resume_of_a_run_that_does_not_record_its_task(tmp_path):
    """Runs written before config.json recorded the task take --task; without it one line says so."""
    from piti_core.config import resolve_config, save_config

    run = tmp_path / "old-run"
    save_config(resolve_config(preset="tiny"), run / "config.json")
    res = CliRunner().invoke(cli, ["train", "--resume", "--out", str(run)])
    assert res.exit_code == 2 and "does not record its task" in res.stderr and "--task" in res.stderr
