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
from server.threads import helper_executor


def test_helper_threads_run_torch_on_one_thread() -> None:
    before = torch.get_num_threads()
    with helper_executor() as executor:
        assert executor.submit(torch.get_num_threads).result() == 1

    async def through_the_event_loop() -> int:
        asyncio.get_running_loop().set_default_executor(helper_executor())
        return await asyncio.to_thread(torch.get_num_threads)

    assert asyncio.run(through_the_event_loop()) == 1
    assert torch.get_num_threads() == before  # this thread's own count is untouched
    torch.set_num_threads(before)  # and threads started later get it again


def test_the_engine_thread_sets_its_own_thread_count(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        torch_engine.torch,
        "set_num_threads",
        lambda n: calls.append((threading.current_thread().name, n)),
    )
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=64, max_candidates=2)
    engine = TorchEngine(runner, tiny_tokenizer, threads=3)
    asyncio.run(engine.shutdown())
    assert calls == [("torch-engine", 3)]
