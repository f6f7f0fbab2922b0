"""Hostile `--set` values for `piti sample` / `piti eval`, and `--seed` for training: one line each."""

import numpy as np
import pytest
from PIL import Image

from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("run") / "sketch")[0]


@pytest.fixture(scope="module")
def sketch(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "s.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(path)
    return path


CASES = [
    ("train.lr=1e-4", ["sample."]),  # only the sample section can change when sampling a run
    ("model.channels=8", ["sample."]),
    ("sample.guidance_scale=inf", ["sample.guidance_scale", "finite"]),
    ("sample.guidance_scale=nan", ["sample.guidance_scale", "finite"]),
    ("sample.bogus=1", ["sample.bogus"]),
    ("sample.upsampler_start=0", ["sample.upsampler_start"]),
    ("sample.batch_size=0", ["sample.batch_size"]),
    ("sample", ["sample"]),  # no '='
]


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("override, mentions", CASES)
def test_bad_set_is_one_usage_line(run_dir, sketch, tmp_path, command, override, mentions):
    watched = snapshot(run_dir, sketch)
    extra = ["--input", sketch] if command == "sample" else ["--n", "2"]
    res = invoke(command, "--run", run_dir, *extra, "--out", tmp_path / "out", "--set", override)
    assert_clean_failure(res, 2, mentions=mentions, watched=watched, watched_paths=[run_dir, sketch])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("seed", ["-1", "abc", str(2**64)])
def test_bad_train_seed_is_one_usage_line(tmp_path, command, seed):
    res = invoke(command, *(["--task", "sketch"] if command == "train" else []), "--out", tmp_path / "run",
                 "--seed", seed)
    assert_clean_failure(res, 2, mentions=["--seed"])
    assert not (tmp_path / "run").exists()
