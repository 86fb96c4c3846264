"""The serving benchmark's peak-RSS sampler sums a process tree and keeps its peak."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.serving import peak_rss, tree_rss_bytes

HOLD_64_MIB = "b = bytearray(64 * 2**20); import time; time.sleep(1.0)"
# A small parent that runs the 64 MiB child: the tree measured is the parent's, whose own RSS
# stays small and steady (the test process's would move by more than 64 MiB as tests free memory).
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOLD_64_MIB!r}])"


def test_the_peak_counts_a_child_that_has_exited_since() -> None:
    """A child holding 64 MiB for a second raises its parent's tree peak, though gone after."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    with peak_rss(parent.pid, every_s=0.05) as peak:
        parent.wait()
    assert peak[0] >= 64 * 2**20
    assert tree_rss_bytes(parent.pid) == 0


def test_a_process_that_is_gone_holds_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert tree_rss_bytes(gone.pid) == 0
