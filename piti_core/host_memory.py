"""Keep the memory one CPU step frees for the next step instead of handing it back to the kernel.

A glide base training step at batch 1 allocates and frees hundreds of megabytes of activations and
gradients. glibc's malloc serves blocks above its mmap threshold with fresh ``mmap`` calls and gives
freed memory at the top of its heap back to the kernel, so every step touches its memory anew:
120,000–150,000 minor page faults and 0.9–2.2 s of kernel time per 8–9 s step on the development VM
(docs/performance.md, "Freed memory kept between steps"). :func:`keep_freed_memory` sets three
``mallopt`` parameters once per process: blocks up to :data:`MMAP_THRESHOLD` come from the heap,
freed heap memory is kept up to :data:`TRIM_THRESHOLD`, and the heap grows by :data:`TOP_PAD` at a
time. Once the heap has grown to a step's size (one or two steps) the faults drop to about none and
the kernel time to 0.01 s per step; the peak RSS stays the same (the step's memory is reused, not
added to). The PyTorch CPU tuning guide recommends jemalloc or TCMalloc for the same reason; this
needs no extra library.

glibc only (Linux): elsewhere, or with ``PITI_MALLOC_TUNING=0``, nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

ENV = "PITI_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = (2 << 30) - 1  # mallopt takes an int: keep up to 2 GiB of freed memory at the heap's top
TOP_PAD = 64 << 20

_applied: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above, once per process; True when the settings are in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
