"""Keep freed host memory in the process for reuse instead of handing it back to the kernel.

glibc's malloc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) with
fresh `mmap` pages and unmaps them on free, and trims the heap top when it is free. A batched
evaluation step allocates and frees the same large host buffers every step (the processor's
`pixel_values` alone is 38 MB for 8 images of 448 px), so each step page-faults tens of MB
again: ~18k minor faults and ~30 ms of kernel time per 8-image step on the project's CPU
machine, ~10 % of the step (`python bench/eval_speed.py`, which calls this too). Raising the
thresholds makes such blocks come from the heap, which keeps them. The numbers a run computes do
not change; the process keeps its peak host memory instead of returning it.

`HIERTRAIN_MALLOC=default` leaves glibc as it is; on other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h> option numbers
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # never trim the heap top on free
TOP_PAD = 1 << 28  # grow the heap 256 MiB at a time


def retain_freed_memory() -> bool:
    """Apply the settings above to this process's glibc malloc; True when they took effect."""
    if os.environ.get("HIERTRAIN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD), mallopt(M_TOP_PAD, TOP_PAD)]
    return all(done)
