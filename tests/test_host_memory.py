"""piti_core.host_memory: freed memory is kept for the next step instead of being faulted in again."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="malloc tuning applies to glibc (Linux) only")

CHURN = """
import resource
from piti_core.host_memory import keep_freed_memory
tuned = keep_freed_memory()
assert keep_freed_memory() == tuned  # once per process, same answer
import torch
def step():  # a step's worth of large temporaries, all freed at its end
    blocks = [torch.ones(2**21) for _ in range(25)]  # 25 x 8 MiB
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""
PAGES_PER_STEP = 25 * 8 * 2**20 // 4096


def _churn(setting: str) -> tuple[bool, float]:
    env = {**os.environ, "PITI_MALLOC_TUNING": setting}
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


def test_tuned_malloc_reuses_freed_memory_and_the_switch_turns_it_off():
    tuned, faults = _churn("1")
    plain, plain_faults = _churn("0")
    assert tuned and not plain
    # glibc's defaults hand most of the 200 MiB back and fault it in again at every step
    assert faults < 0.15 * PAGES_PER_STEP and faults < 0.5 * plain_faults, (faults, plain_faults)
