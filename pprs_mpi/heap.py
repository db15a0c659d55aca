"""The process keeps the memory it frees for reuse, rather than returning it to the system at every pass.

A pass allocates each node's output anew (64 copies of a width-512 layer: 256 KiB). glibc's malloc serves
blocks that size from fresh mappings or gives the top of its heap back once enough is free, so each pass
then pays the page faults again: 13% of the width-512 MLP's iteration on this project's machine
(benchmarks/vs_hand_loop.py), 7–10x the time of a ReLU on memory already mapped. `keep_freed_memory` sets
glibc's thresholds once, as MALLOC_MMAP_THRESHOLD_=32 MiB and MALLOC_TRIM_THRESHOLD_=64 MiB would: blocks
under 32 MiB come from the heap, and up to 64 MiB of free heap stays mapped. A user's own MALLOC_* settings
win; where the C library is not glibc nothing changes. Numbers are unaffected: only where memory comes from.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's mallopt parameters (malloc.h) and the values set
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 64 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds (once per process is enough; repeating is harmless); whether they were set."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in USER_SETTINGS):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
