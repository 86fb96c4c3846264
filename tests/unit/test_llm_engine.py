"""The engine's step loop: batched sampling of plain sequences, seeded and greedy."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

import engine.llm_engine as llm_engine
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from tests.unit.test_model_runner import greedy_reference


def run(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    requests: list[tuple[list[int], SamplingParams]],
) -> list[list[int]]:
    """Serve the requests together on one engine; their output token ids."""
    runner = ModelRunner(model, num_slots=4, max_model_len=64, max_candidates=4, native=True)
    engine = LLMEngine(runner)
    seqs = [
        Sequence(f"r{i}", prompt, params, tokenizer, frozenset({0}), 64)
        for i, (prompt, params) in enumerate(requests)
    ]
    for seq in seqs:
        engine.add(seq)
    while engine.has_work():
        assert not engine.step().failed
    return [s.output_ids for s in seqs]


def test_greedy_rows_equal_single_sequence_greedy(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = [[5, 6, 7], [40, 41, 42, 43, 44], [9]]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    outputs = run(tiny_llama, tiny_tokenizer, [(p, params) for p in prompts])
    assert outputs == [greedy_reference(tiny_llama, p, 6) for p in prompts]


def test_seeded_request_gives_the_same_tokens_alone_and_in_a_batch(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    seeded = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    others = [
        SamplingParams(max_tokens=5, temperature=0.7, seed=1, ignore_eos=True),
        SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
    ]
    alone = run(tiny_llama, tiny_tokenizer, [([5, 6, 7], seeded)])[0]
    together = run(
        tiny_llama, tiny_tokenizer, [([8, 9], others[0]), ([5, 6, 7], seeded), ([3], others[1])]
    )
    assert together[1] == alone
    assert len(set(alone)) > 1


def test_one_sampling_call_per_step_for_all_plain_rows(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = llm_engine.sample_batch

    def counting(logits, params, generators):  # type: ignore[no-untyped-def]
        calls.append(len(params))
        return real(logits, params, generators)

    monkeypatch.setattr(llm_engine, "sample_batch", counting)
    params = SamplingParams(max_tokens=4, temperature=0.5, seed=3, ignore_eos=True)
    run(tiny_llama, tiny_tokenizer, [([5, 6], params), ([7], params), ([8, 9, 10], params)])
    assert calls == [3, 3, 3, 3]


def test_a_long_prompt_enters_in_chunks_while_others_keep_decoding(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=128, max_candidates=4, native=True)
    engine = LLMEngine(runner, max_prefill_tokens=16)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    short = Sequence("short", [5, 6, 7], greedy, tiny_tokenizer, frozenset({0}), 128)
    long_prompt = [3 + (i * 7) % 90 for i in range(60)]
    long = Sequence("long", long_prompt, greedy, tiny_tokenizer, frozenset({0}), 128)
    engine.add(short)
    engine.step()
    engine.add(long)
    lengths: list[tuple[int, int]] = []
    while engine.has_work():
        assert not engine.step().failed
        lengths.append((len(short.output_ids), runner.length(1)))
    # the long prompt took 4 chunks of at most 16 tokens, one per step, and the short
    # sequence gained a token in each of those steps
    assert [n for n, _ in lengths[:4]] == [2, 3, 4, 5]
    assert [cached for _, cached in lengths[:3]] == [16, 32, 48]
    assert long.output_ids == greedy_reference(tiny_llama, long_prompt, 12)
    assert short.output_ids == greedy_reference(tiny_llama, [5, 6, 7], 12)


def test_chunked_prompt_state_is_the_mean_over_the_whole_prompt(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    states: dict[str, torch.Tensor] = {}

    class Recording(Sequence):
        uses_prompt_state = True

        def on_prefill(self, logits: torch.Tensor, prompt_state: torch.Tensor | None) -> None:
            states[self.request_id] = prompt_state
            super().on_prefill(logits, prompt_state)

    prompt = [3 + (i * 5) % 90 for i in range(40)]
    for budget in (7, 4096):
        runner = ModelRunner(tiny_llama, num_slots=1, max_model_len=64, max_candidates=1)
        engine = LLMEngine(runner, max_prefill_tokens=budget)
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        engine.add(Recording(f"b{budget}", prompt, params, tiny_tokenizer, frozenset({0}), 64))
        while engine.has_work():
            engine.step()
    torch.testing.assert_close(states["b7"], states["b4096"], atol=1e-5, rtol=1e-5)
