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


def recording_prompt_states(states: dict[str, torch.Tensor]) -> type[Sequence]:
    """A plain sequence type that asks for the prompt state and keeps it in `states` by id."""

    class Recording(Sequence):
        uses_prompt_state = True

        def on_prefill(self, logits: torch.Tensor, prompt_state: torch.Tensor | None) -> None:
            assert prompt_state is not None
            states[self.request_id] = prompt_state
            super().on_prefill(logits, prompt_state)

    return Recording


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
    Recording = recording_prompt_states(states)

    prompt = [3 + (i * 5) % 90 for i in range(40)]
    for budget in (7, 4096):
        runner = ModelRunner(tiny_llama, num_slots=1, max_model_len=64, max_candidates=1)
        engine = LLMEngine(runner, max_prefill_tokens=budget)
        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        engine.add(Recording(f"b{budget}", prompt, params, tiny_tokenizer, frozenset({0}), 64))
        while engine.has_work():
            engine.step()
    torch.testing.assert_close(states["b7"], states["b4096"], atol=1e-5, rtol=1e-5)


def run_counting(
    engine: LLMEngine, seqs: list[Sequence], abort_after: dict[str, int] | None = None
) -> tuple[int, int]:
    """Step the sequences to the end (aborting some after N steps); tokens prefilled, shared."""
    for seq in seqs:
        engine.add(seq)
    prefilled = shared = steps = 0
    while engine.has_work():
        result = engine.step()
        assert not result.failed
        prefilled += result.prefilled
        shared += result.shared
        steps += 1
        for request_id, after in (abort_after or {}).items():
            if steps == after:
                engine.abort(request_id)
    return prefilled, shared


def test_sequences_with_one_prompt_prefill_it_once_and_decode_as_if_alone(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    prompt = [3 + (i * 7) % 90 for i in range(20)]
    params = [
        SamplingParams(max_tokens=8, temperature=0.8, seed=10 + i, ignore_eos=True)
        for i in range(3)
    ] + [SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)]
    alone = [run(tiny_llama, tiny_tokenizer, [(prompt, p)])[0] for p in params]
    for budget in (2048, 6):  # whole prompt in one step, or in chunks while followers wait
        runner = ModelRunner(tiny_llama, num_slots=4, max_model_len=64, max_candidates=4)
        engine = LLMEngine(runner, max_prefill_tokens=budget)
        seqs = [
            Sequence(f"c{i}", prompt, p, tiny_tokenizer, frozenset({0}), 64)
            for i, p in enumerate(params)
        ]
        prefilled, shared = run_counting(engine, seqs)
        assert [s.output_ids for s in seqs] == alone
        assert (prefilled, shared) == (len(prompt), 3 * len(prompt))
        assert len({tuple(s.output_ids) for s in seqs}) > 1
        assert engine.scheduler.free_slots == [0, 1, 2, 3]


def test_followers_get_the_prompt_state_of_the_sequence_that_prefilled(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    states: dict[str, torch.Tensor] = {}
    Recording = recording_prompt_states(states)

    prompt = [3 + (i * 5) % 90 for i in range(12)]
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    runner = ModelRunner(tiny_llama, num_slots=3, max_model_len=64, max_candidates=1)
    engine = LLMEngine(runner, max_prefill_tokens=5)
    seqs = [
        Recording(f"s{i}", prompt, params, tiny_tokenizer, frozenset({0}), 64) for i in range(3)
    ]
    assert run_counting(engine, seqs) == (len(prompt), 2 * len(prompt))
    for follower in ("s1", "s2"):
        torch.testing.assert_close(states[follower], states["s0"])


def test_a_follower_prefills_itself_when_its_source_is_aborted_mid_prompt(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    prompt = [3 + (i * 11) % 90 for i in range(24)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    runner = ModelRunner(tiny_llama, num_slots=3, max_model_len=64, max_candidates=1)
    engine = LLMEngine(runner, max_prefill_tokens=8)
    seqs = [Sequence(f"a{i}", prompt, params, tiny_tokenizer, frozenset({0}), 64) for i in range(3)]
    prefilled, shared = run_counting(engine, seqs, abort_after={"a0": 1})
    expected = greedy_reference(tiny_llama, prompt, 6)
    assert [s.output_ids for s in seqs[1:]] == [expected, expected]
    assert (prefilled, shared) == (8 + len(prompt), len(prompt))


def test_a_later_request_copies_the_prompt_from_a_decoding_one_and_slots_are_reused(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    prompt = [3 + (i * 13) % 90 for i in range(10)]
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=64, max_candidates=1)
    engine = LLMEngine(runner)
    first = Sequence("first", prompt, greedy, tiny_tokenizer, frozenset({0}), 64)
    engine.add(first)
    for _ in range(4):
        engine.step()
    later = Sequence("later", prompt, greedy, tiny_tokenizer, frozenset({0}), 64)
    assert run_counting(engine, [later]) == (0, len(prompt))
    expected = greedy_reference(tiny_llama, prompt, 10)
    assert first.output_ids == later.output_ids == expected
    other = Sequence("other", [5, 6, 7], greedy, tiny_tokenizer, frozenset({0}), 64)
    assert run_counting(engine, [other]) == (3, 0)
    assert other.output_ids == greedy_reference(tiny_llama, [5, 6, 7], 10)
