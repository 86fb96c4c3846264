"""The prefix cache: longest shared prefix, LRU eviction in bytes, and reuse by the engine."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.prefix_cache import CachedPrompt, PrefixCache
from engine.sampling import SamplingParams
from tests.unit.test_llm_engine import recording_prompt_states
from tests.unit.test_model_runner import greedy_reference


def entry(tokens: list[int]) -> CachedPrompt:
    """A kept prompt of one layer with two K/V heads of width 4 and states of width 8."""
    n = len(tokens)
    keys = [torch.arange(2 * n * 4, dtype=torch.float32).view(2, n, 4)]
    return CachedPrompt(tuple(tokens), keys, [k + 1 for k in keys], torch.zeros(n, 8))


def test_longest_shared_prefix_wins_and_the_last_prompt_token_is_left_to_prefill() -> None:
    cache = PrefixCache(max_bytes=1 << 20, min_tokens=3)
    cache.add(entry([1, 2, 3, 4, 5, 6]))
    cache.add(entry([1, 2, 3, 9, 9]))
    hit = cache.longest_prefix([1, 2, 3, 4, 5, 7, 8])
    assert hit is not None and hit[0].tokens == (1, 2, 3, 4, 5, 6) and hit[1] == 5
    hit = cache.longest_prefix([1, 2, 3, 4, 5, 6])  # all of it kept: the last token is redone
    assert hit is not None and hit[1] == 5
    assert cache.longest_prefix([1, 2, 8, 8, 8]) is None  # 2 shared tokens < min_tokens
    assert not cache.wants([1, 2, 3, 4, 5, 6]) and not cache.wants([1, 2])
    assert cache.wants([7, 7, 7])


def test_least_recently_used_prompts_leave_first_beyond_the_byte_bound() -> None:
    size = entry([1, 2, 3, 4]).nbytes
    cache = PrefixCache(max_bytes=2 * size, min_tokens=2)
    for first in (10, 20):
        cache.add(entry([first, 2, 3, 4]))
    assert cache.longest_prefix([10, 2, 3, 4, 5]) is not None  # 10... is now the most recent
    cache.add(entry([30, 2, 3, 4]))
    assert len(cache) == 2 and cache.nbytes == 2 * size
    assert cache.longest_prefix([20, 2, 3, 4, 5]) is None
    assert cache.longest_prefix([10, 2, 3, 4, 5]) is not None
    PrefixCache(max_bytes=size - 1).add(entry([1, 2, 3, 4]))  # too large to keep: ignored


def test_a_document_asked_about_again_prefills_only_the_new_question(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    document = [3 + (i * 7) % 90 for i in range(80)]
    first, second = [*document, 11, 12, 13], [*document, 21, 22]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    states: dict[str, torch.Tensor] = {}
    Recording = recording_prompt_states(states)

    def serve(engine: LLMEngine, name: str, prompt: list[int]) -> tuple[list[int], int, int]:
        seq = Recording(name, prompt, params, tiny_tokenizer, frozenset({0}), 128)
        engine.add(seq)
        prefilled = cached = 0
        while engine.has_work():
            result = engine.step()
            assert not result.failed
            prefilled, cached = prefilled + result.prefilled, cached + result.cached
        return seq.output_ids, prefilled, cached

    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=128, max_candidates=1)
    engine = LLMEngine(runner, max_prefill_tokens=32, prefix_cache_bytes=64 << 20)
    assert serve(engine, "first", first)[1:] == (len(first), 0)
    output, prefilled, cached = serve(engine, "second", second)
    assert (prefilled, cached) == (2, len(document))
    assert output == greedy_reference(tiny_llama, second, 6)
    fresh = LLMEngine(ModelRunner(tiny_llama, num_slots=2, max_model_len=128, max_candidates=1))
    serve(fresh, "alone", second)
    torch.testing.assert_close(states["second"], states["alone"], atol=1e-5, rtol=1e-5)
    assert len(engine.prefix_cache) == 2
