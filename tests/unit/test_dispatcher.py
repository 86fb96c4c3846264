"""Least-loaded dispatch over two torch engines on the tiny model."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from guard.config import GuardConfig, GuardRun
from server.engines.dispatcher import LeastLoadedDispatcher
from server.engines.torch_engine import TorchEngine


def make_engine(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> TorchEngine:
    runner = ModelRunner(model, num_slots=4, max_model_len=128, max_candidates=4)
    return TorchEngine(runner, tokenizer)


def test_requests_spread_over_both_runners_and_all_finish(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engines = [make_engine(tiny_llama, tiny_tokenizer) for _ in range(2)]
    dispatcher = LeastLoadedDispatcher(engines)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    seen: list[tuple[int, int]] = []
    picks: list[int] = []
    choose = dispatcher.pick

    def recording_pick() -> TorchEngine:
        engine = choose()
        picks.append(engines.index(engine))
        return engine

    dispatcher.pick = recording_pick  # type: ignore[method-assign]

    async def one(index: int) -> int:
        count = 0
        async for chunk in dispatcher.generate(f"r{index}", [5, 6, 7 + index], params):
            seen.append(dispatcher.pending())
            count = chunk.completion_tokens
        return count

    async def main() -> list[int]:
        results = await asyncio.gather(*(one(i) for i in range(6)))
        await dispatcher.shutdown()
        return list(results)

    assert asyncio.run(main()) == [12] * 6
    assert sorted(set(picks)) == [0, 1]
    assert all(engine.core.runner.cache.lengths == [0, 0, 0, 0] for engine in engines)
    assert max(running + waiting for running, waiting in seen) <= 6


def test_least_loaded_pick_prefers_the_idle_engine(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engines = [make_engine(tiny_llama, tiny_tokenizer) for _ in range(2)]
    dispatcher = LeastLoadedDispatcher(engines)
    engines[0]._active = 3
    assert dispatcher.pick() is engines[1]
    engines[0]._active = 0
    assert dispatcher.pick() is engines[0]
    asyncio.run(dispatcher.shutdown())


def test_each_runner_reports_its_own_guard_buffer(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    labels = ["torch-0-test", "torch-1-test"]
    engines = [
        TorchEngine(
            ModelRunner(tiny_llama, num_slots=2, max_model_len=128, max_candidates=4),
            tiny_tokenizer,
            label=label,
        )
        for label in labels
    ]
    dispatcher = LeastLoadedDispatcher(engines)
    guard = GuardRun(GuardConfig(enabled=True, tau_token=0.0, tau_low=0.0, tau_high=0.0))
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)

    async def one(index: int) -> None:
        async for _ in dispatcher.generate_guarded(f"g{index}", [5, 6, 7], params, guard):
            pass

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(2)))
        await dispatcher.shutdown()

    asyncio.run(main())
    # One gauge series per runner (a shared one would let each overwrite the other's value).
    for label in labels:
        assert REGISTRY.get_sample_value("guardserve_guard_buffer_bytes", {"engine": label}) == 0
