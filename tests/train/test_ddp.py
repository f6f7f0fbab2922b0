"""Two gloo processes with batch B each give the weights of one process with batch 2B."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(data_dir, prior_dir, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, str(WORKER), str(data_dir), str(prior_dir), str(single), "4"],
                   check=True, env=_env(), timeout=600)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(WORKER), str(data_dir), str(prior_dir), str(double), "2"],
                         env=_env(), timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(single / "base.safetensors"))
    b = load_file(str(double / "base.safetensors"))
    moved = 0
    prior = load_file(str(next(prior_dir.glob("text_base.safetensors"))))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
        if k.startswith("encoder.") and not torch.equal(a[k], torch.zeros_like(a[k])):
            moved += 1
    assert moved > 0
    assert (double / "metrics.jsonl").read_text().count("\n") == 3  # rank 0 logs once per step
    assert prior  # the prior was read
