"""Sampling filters and incremental detokenization with stop strings."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling import SamplingParams, filtered_logits, sample_token


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([0.1, 2.0, 1.9])
    assert sample_token(logits, SamplingParams(max_tokens=1, temperature=0.0), None) == 1


def test_top_k_keeps_only_the_k_best() -> None:
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0])
    kept = filtered_logits(logits, SamplingParams(max_tokens=1, top_k=2))
    assert torch.isfinite(kept).tolist() == [True, False, True, False]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = filtered_logits(probs.log(), SamplingParams(max_tokens=1, top_p=0.8))
    assert torch.isfinite(kept).tolist() == [True, True, False, False]


def test_a_vanishing_top_p_still_keeps_the_best_token() -> None:
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0])
    params = SamplingParams(max_tokens=1, top_p=5e-324)  # rounds to 0 in float32
    generator = torch.Generator().manual_seed(0)
    assert [sample_token(logits, params, generator) for _ in range(5)] == [1] * 5


def test_seeded_sampling_repeats() -> None:
    logits = torch.zeros(50)
    params = SamplingParams(max_tokens=1, temperature=1.0)
    draws = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        draws.append([sample_token(logits, params, generator) for _ in range(10)])
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1


def test_detokenizer_streams_stable_text(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    ids = [5, 6, 1, 7]
    detok = IncrementalDetokenizer(tiny_tokenizer)
    text = "".join(detok.push(t) for t in ids) + detok.flush()
    assert text == tiny_tokenizer.decode(ids)


def test_detokenizer_cuts_at_a_stop_string_and_holds_back_its_prefix(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    detok = IncrementalDetokenizer(tiny_tokenizer, stop=("w7 w8",))
    pieces = [detok.push(t) for t in [5, 6, 7]]
    assert "w7" not in "".join(pieces)
    assert not detok.stopped
    pieces.append(detok.push(8))
    assert detok.stopped
    assert detok.text == "w5 w6 "
    assert "".join(pieces) + detok.flush() == "w5 w6 "
