"""The serving benchmark's peak-RSS sampler sums a process tree and keeps its peak."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.serving import peak_rss, tree_rss_bytes

HOLD_64_MIB = "b = bytearray(64 * 2**20); import time; time.sleep(1.0)"


def test_the_peak_counts_a_child_that_has_exited_since() -> None:
    """A child holding 64 MiB for a second raises the tree's peak, though it is gone after."""
    before = tree_rss_bytes(os.getpid())
    with peak_rss(os.getpid(), every_s=0.05) as peak:
        subprocess.run([sys.executable, "-c", HOLD_64_MIB], check=True)
    assert peak[0] >= before + 64 * 2**20
    assert tree_rss_bytes(os.getpid()) < peak[0]


def test_a_process_that_is_gone_holds_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert tree_rss_bytes(gone.pid) == 0
