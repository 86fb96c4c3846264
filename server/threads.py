"""Threads of the server process: the torch runners' OpenMP teams, and one-thread helpers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def helper_executor() -> ThreadPoolExecutor:
    """The event loop's executor (`asyncio.to_thread`): torch work there runs on one thread.

    Every thread that runs a multi-threaded torch op keeps an OpenMP team alive. Once libgomp
    manages more threads than there are CPUs it shortens its spin-waits, and every parallel
    region of the engine thread then pays a wake-up: on 2 cores a batch-8 decode step took
    42 ms instead of 29 after the loading thread had run 2-thread ops (README). So only the
    runners' threads use several (`TorchEngine(threads=...)`).
    """
    return ThreadPoolExecutor(
        thread_name_prefix="guardserve-helper", initializer=torch.set_num_threads, initargs=(1,)
    )
