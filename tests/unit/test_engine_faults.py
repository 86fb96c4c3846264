"""A failure inside one sequence, or one batch, fails only its own requests."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from engine.sequence import Sequence


class BrokenSequence(Sequence):
    """Raises on its third step."""

    steps = 0

    def append_token(self, token: int, logits: torch.Tensor) -> None:
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("boom")
        super().append_token(token, logits)


def make(cls: type[Sequence], rid: str, tokenizer: PreTrainedTokenizerFast) -> Sequence:
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    return cls(rid, [5, 6, 7], params, tokenizer, frozenset({0}), 64)


def test_a_failing_sequence_fails_alone(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    runner = ModelRunner(tiny_llama, num_slots=3, max_model_len=64, max_candidates=4)
    engine = LLMEngine(runner)
    good = [make(Sequence, f"ok{i}", tiny_tokenizer) for i in range(2)]
    bad = make(BrokenSequence, "bad", tiny_tokenizer)
    for seq in [good[0], bad, good[1]]:
        engine.add(seq)
    failed: dict[str, str] = {}
    while engine.has_work():
        failed.update(engine.step().failed)
    assert failed == {"bad": "RuntimeError: boom"}
    assert [len(s.output_ids) for s in good] == [10, 10]
    assert runner.cache.lengths == [0, 0, 0]


def test_a_failing_forward_fails_its_batch_and_the_engine_goes_on(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    runner = ModelRunner(tiny_llama, num_slots=2, max_model_len=64, max_candidates=4)
    engine = LLMEngine(runner)
    too_long = Sequence(
        "long", list(range(3, 80)), SamplingParams(max_tokens=2), tiny_tokenizer, frozenset(), 64
    )
    engine.add(too_long)
    assert "long" in engine.step().failed
    after = make(Sequence, "after", tiny_tokenizer)
    engine.add(after)
    while engine.has_work():
        assert not engine.step().failed
    assert len(after.output_ids) == 10
