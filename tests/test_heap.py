"""The solver's process keeps freed memory mapped (pprs_mpi/heap.py): a pass that allocates its outputs anew then
takes no page faults, where glibc's defaults give every 256 KiB block back and fault it in again. Counted with
getrusage's minor faults, in fresh processes; skipped where the C library is not glibc."""

import platform
import sys

import pytest

from conftest import run

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")

PASSES, OUTPUTS = 50, 16
CHURN = f"""
import resource, sys
import numpy as np
from pprs_mpi import heap
print(heap.keep_freed_memory() if sys.argv[1] == "keep" else "-")
def one_pass():
    outputs = [np.ones((64, 512)) for _ in range({OUTPUTS})]  # 16 nodes' outputs of 64 copies: 256 KiB each
    del outputs
one_pass(); one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({PASSES}):
    one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env=None) -> tuple[str, int]:
    result = run([sys.executable, "-c", CHURN, mode], timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    kept, count = result.stdout.split()
    return kept, int(count)


def test_passes_after_the_first_take_no_page_faults():
    pages = 64 * 512 * 8 // 4096
    _, default = faults("default")
    kept, keep = faults("keep")
    assert default >= PASSES * OUTPUTS * pages // 2  # glibc's defaults: each pass maps its blocks afresh
    assert kept == "True" and keep < 100


def test_a_users_own_malloc_setting_wins():
    kept, _ = faults("keep", env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert kept == "False"
