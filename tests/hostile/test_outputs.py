"""One rule for every command that writes a folder: ``--overwrite`` replaces only what piti wrote there.

``piti convert``, ``piti data toyworld``, ``piti data oracle`` and ``piti bench --json-file`` refuse, in one
line and before any work, to replace a file of the user's that happens to share a name with one of
their outputs; and ``piti train`` checks PITI_HOME and the prior's weights before it writes anything.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.convert.conftest import BASE, ENC, random_official_sd
from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot


@pytest.fixture
def user_folder(tmp_path):
    """A folder of the user's with files named like piti's outputs."""
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "config.json").write_text('{"my": "settings"}\n')
    (folder / "run.json").write_text('{"my": "run"}\n')
    (folder / "training.json").write_text("{}\n")
    (folder / "images" / "000000.png").write_bytes(b"my picture")
    return folder


def test_convert_overwrite_keeps_a_users_config(user_folder, tmp_path):
    pt = tmp_path / "base.pt"
    torch.save(random_official_sd(BASE, ENC, 3), pt)
    before = snapshot(user_folder, pt)
    res = invoke("convert", "--base", pt, "--task", "sketch", "--out", user_folder, "--overwrite")
    assert_clean_failure(res, 2, mentions=["config.json", "not written by"], watched=before,
                         watched_paths=[user_folder, pt])


def test_toyworld_overwrite_keeps_a_users_images(user_folder):
    before = snapshot(user_folder)
    res = invoke("data", "toyworld", "--out", user_folder, "--n", "2", "--size", "16", "--overwrite")
    assert_clean_failure(res, 2, mentions=["did not write"], watched=before, watched_paths=[user_folder])


def test_toyworld_overwrite_replaces_its_own_world(tmp_path):
    out = tmp_path / "world"
    assert invoke("data", "toyworld", "--out", out, "--n", "2", "--size", "16").exit_code == 0
    (out / "notes.txt").write_text("mine")
    res = invoke("data", "toyworld", "--out", out, "--n", "3", "--size", "16", "--overwrite")
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "dataset.json").read_text())["n"] == 3
    assert (out / "notes.txt").read_text() == "mine"


def test_oracle_overwrite_keeps_a_users_files(user_folder):
    before = snapshot(user_folder)
    res = invoke("data", "oracle", "--out", user_folder, "--n", "2", "--steps", "1", "--eval-n", "1", "--overwrite")
    assert_clean_failure(res, 2, mentions=["training.json", "not written by"], watched=before,
                         watched_paths=[user_folder])


def test_bench_json_file_keeps_a_users_file(tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": true}\n')
    before = snapshot(mine)
    res = invoke("bench", "--compare", "--json-file", mine, "--overwrite", "--preset", "tiny")
    assert_clean_failure(res, 2, mentions=["results.json", "not written by"], watched=before, watched_paths=[mine])


def test_train_with_piti_home_a_file_writes_nothing(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    out = tmp_path / "run"
    res = invoke("train", "--task", "sketch", "--out", out, env={"PITI_HOME": str(home)})
    assert_clean_failure(res, 1, mentions=["PITI_HOME"], watched=snapshot(home), watched_paths=[home])
    assert not out.exists()


def test_train_refuses_a_prior_with_nan_weights(tmp_path):
    prior = random_run(tmp_path / "prior", "sketch", upsampler=False)[0]
    state = load_file(str(prior / "base.safetensors"))
    key = next(k for k in state if k.startswith("decoder.") and state[k].is_floating_point())
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(prior / "base.safetensors"))
    before = snapshot(prior)
    res = invoke("train", "--task", "sketch", "--prior", prior, "--out", tmp_path / "run", "--stage", "stage1",
                 "--set", "data.toyworld_samples=8", "--no-preview")
    assert_clean_failure(res, 1, mentions=["prior", "NaN"], watched=before, watched_paths=[prior])
