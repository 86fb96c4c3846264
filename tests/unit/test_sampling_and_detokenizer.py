"""Sampling filters and incremental detokenization with stop strings."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling import SamplingParams, Shortlist, filtered_logits, sample_batch, shortlists


def test_greedy_takes_the_argmax_of_every_row() -> None:
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, 0.0, 1.0]])
    params = [SamplingParams(max_tokens=1, temperature=0.0)] * 2
    assert sample_batch(logits, params, [None, None]) == [1, 0]


def test_top_k_keeps_only_the_k_best() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    kept = filtered_logits(logits, [SamplingParams(max_tokens=1, top_k=2)])
    assert torch.isfinite(kept[0]).tolist() == [True, False, True, False]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filtered_logits(probs.log(), [SamplingParams(max_tokens=1, top_p=0.8)])
    assert torch.isfinite(kept[0]).tolist() == [True, True, False, False]


@pytest.mark.parametrize("top_p", [5e-324, 0.0], ids=["rounds_to_zero", "zero"])
def test_a_vanishing_top_p_still_keeps_the_best_token(top_p: float) -> None:
    """OpenAI's top_p 0 (and one that rounds to 0 in float32) is the top token alone."""
    logits = torch.tensor([[0.5, 3.0, 1.0, -2.0]]).expand(5, -1)
    params = [SamplingParams(max_tokens=1, top_p=top_p)] * 5
    generators = [torch.Generator().manual_seed(i) for i in range(5)]
    assert sample_batch(logits, params, generators) == [1] * 5


def test_filters_apply_per_row() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]).log()
    params = [SamplingParams(max_tokens=1, top_p=0.8), SamplingParams(max_tokens=1, top_k=1)]
    kept = filtered_logits(logits, params)
    assert torch.isfinite(kept).tolist() == [
        [True, True, False, False],
        [True, False, False, False],
    ]


def test_sampled_rows_only_draw_kept_tokens() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]]).expand(64, -1)
    params = [SamplingParams(max_tokens=1, top_k=2)] * 64
    draws = sample_batch(logits, params, [torch.Generator().manual_seed(i) for i in range(64)])
    assert set(draws) == {0, 2}


def test_draws_follow_the_filtered_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, -1)
    params = [SamplingParams(max_tokens=1, top_p=0.9)] * 4000  # drops the 0.05 token
    draws = sample_batch(logits, params, [torch.Generator().manual_seed(i) for i in range(4000)])
    shares = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    torch.testing.assert_close(shares, expected, atol=0.03, rtol=0)


def test_seeded_draws_do_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    params = [SamplingParams(max_tokens=1, temperature=0.9, top_p=0.95)] * 5

    def draws(rows: list[int]) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(100 + r) for r in rows]
        steps = [sample_batch(logits[rows], params[: len(rows)], generators) for _ in range(10)]
        return [list(column) for column in zip(*steps, strict=True)]

    alone = draws([3])[0]
    together = draws([0, 1, 2, 3, 4])
    assert together[3] == alone
    assert len(set(alone)) > 1
    assert together[0] != together[1]


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


def test_batched_shortlists_match_each_rows_softmax_and_top_tokens() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(4)) * 4
    sizes, temperatures = [2, 5, 3], [0.3, 1.0, 2.0]
    for row, got in enumerate(shortlists(logits, sizes, temperatures)):
        probs = torch.softmax(logits[row] / temperatures[row], dim=-1)
        top = torch.topk(probs, sizes[row])
        assert got.ids == top.indices.tolist()
        torch.testing.assert_close(got.probs, top.values)
    one = Shortlist.from_logits(logits[1], 5, 1.0)
    assert one.without({one.ids[0]}, 2)[0] == one.ids[1:3]
