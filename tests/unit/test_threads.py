"""Only the torch runners' threads run multi-threaded torch ops; helper threads run on one."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from engine.model_runner import ModelRunner
from server.engines import torch_engine
from server.engines.torch_engine import TorchEngine
from server.threads import helper_executor, limit_threads


def count_in_new_thread() -> int:
    """torch's thread count in a thread started now."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_helper_threads_run_torch_on_one_thread_and_leave_others_alone() -> None:
    default = torch.get_num_threads()
    with helper_executor() as executor:
        assert executor.submit(torch.get_num_threads).result() == 1

    async def through_the_event_loop() -> int:
        asyncio.get_running_loop().set_default_executor(helper_executor())
        return await asyncio.to_thread(torch.get_num_threads)

    assert asyncio.run(through_the_event_loop()) == 1
    assert torch.get_num_threads() == default
    assert count_in_new_thread() == default


def test_limit_threads_sets_the_calling_threads_count_only() -> None:
    default = torch.get_num_threads()
    seen: list[int] = []

    def limited() -> None:
        limit_threads(3)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=limited)
    thread.start()
    thread.join()
    assert seen == [3]
    assert count_in_new_thread() == default


def test_the_engine_thread_sets_its_own_thread_count(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        torch_engine, "limit_threads", lambda n: calls.append((threading.current_thread().name, n))
    )
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=64, max_candidates=2)
    asyncio.run(TorchEngine(runner, tiny_tokenizer, threads=3).shutdown())
    asyncio.run(TorchEngine(runner, tiny_tokenizer).shutdown())
    assert calls == [("torch-engine", 3)]
