"""Offline batched sampling: n seeded responses per prompt in one LLMEngine run."""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.sampling import SamplingParams
from engine.sequence import Sequence


def sample_responses(
    runner: ModelRunner,
    tokenizer: PreTrainedTokenizerBase,
    prompts: SequenceOf[list[int]],
    params: SamplingParams,
    n: int,
    seed: int,
) -> list[list[Sequence]]:
    """Sample ``n`` responses per prompt (token ids) in one batched engine run.

    Response g of prompt i uses sampling seed ``seed + i * n + g``. The runner needs
    ``len(prompts) * n`` slots for a single batch (fewer slots queue the rest).
    """
    engine = LLMEngine(runner)
    eos = runner.eos_token_ids(tokenizer)
    groups: list[list[Sequence]] = []
    for i, prompt in enumerate(prompts):
        group = []
        for g in range(n):
            index = i * n + g
            seq = Sequence(
                request_id=f"{i}-{g}",
                prompt_ids=prompt,
                params=replace(params, seed=seed + index),
                tokenizer=tokenizer,
                eos_token_ids=eos,
                max_model_len=runner.max_model_len,
            )
            engine.add(seq)
            group.append(seq)
        groups.append(group)
    while engine.has_work():
        failed = engine.step().failed
        if failed:
            raise RuntimeError(f"batched sampling failed: {failed}")
    return groups
