"""The C allocator's settings for a long mmsent process (glibc on Linux): large blocks given back when freed."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
# feature matrices and the heads' training copies are tens of MB; a batch's images and tensors are smaller,
# and mapping each of those afresh cost `mmsent predict` 5% of its speed at 128 KiB (glibc's starting value)
MMAP_THRESHOLD_BYTES = 4 << 20


def return_large_blocks() -> bool:
    """Serve every allocation of 4 MiB or more from its own mapping, so that freeing it returns it to the system.

    glibc does so from 128 KiB at first, but raises the threshold whenever such a block is freed (up to
    32 MiB): from then on feature matrices and the heads' training copies come from the heap, whose freed
    space the process keeps. A fixed threshold took a cold `make run` from 1605 to 1510 MB at its peak
    before the other savings (benchmarks/bench_run.py). Returns whether it applied (glibc only; elsewhere
    nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
