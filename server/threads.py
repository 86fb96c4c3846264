"""Threads of the server process: the torch runners' OpenMP teams, and one-thread helpers."""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch


@cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch's wheel ships (libgomp on Linux), or None where it has none."""
    for path in sorted((Path(torch.__file__).parent / "lib").glob("lib*omp*.so*")):
        runtime = ctypes.CDLL(str(path))
        if hasattr(runtime, "omp_set_num_threads"):
            return runtime
    return None


def limit_threads(count: int) -> None:
    """Run this thread's torch ops on `count` threads, leaving other threads as they are.

    `torch.set_num_threads` would also set the count every later thread starts with, and it
    turns MKL's dynamic thread count off in the calling thread, which made float32 steps of 32
    rows 26% slower (README); so this sets the calling thread's OpenMP count alone, after
    torch's own per-thread set-up (which would reset it), where torch ships libgomp.
    """
    runtime = _openmp_runtime()
    if runtime is None:
        torch.set_num_threads(count)
        return
    torch.get_num_threads()  # torch's per-thread set-up, once
    runtime.omp_set_num_threads(ctypes.c_int(count))


def helper_executor() -> ThreadPoolExecutor:
    """The event loop's executor (`asyncio.to_thread`): torch work there runs on one thread.

    Every live thread that has run a multi-threaded torch op keeps an OpenMP team. Once libgomp
    manages more threads than there are CPUs it shortens its spin-waits, and every parallel
    region of the engine thread then pays a wake-up: on 2 cores a batch-8 bf16 decode step took
    42 ms instead of 29 while the loading thread's team lived (README). So only the runners'
    threads use several.
    """
    return ThreadPoolExecutor(
        thread_name_prefix="guardserve-helper", initializer=limit_threads, initargs=(1,)
    )
