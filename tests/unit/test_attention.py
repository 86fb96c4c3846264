"""Grouped-matmul attention equals SDPA, and the compact forward gives the same states with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

import engine.attention
from engine.attention import GROUPED_MIN_ROWS, attention, grouped_attention, prefers_grouped
from engine.model_runner import ModelRunner


def random_case(
    rows: int, width: int, keys: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """Query [B, 6, Q, 8] over 2 key heads; each row sees its own number of keys (one sees a
    single key), and new tokens see each other causally, as in a tree step's mask."""
    generator = torch.Generator().manual_seed(rows * 100 + width)
    q = torch.randn(rows, 6, width, 8, generator=generator) * 3
    k = torch.randn(rows, 2, keys, 8, generator=generator)
    v = torch.randn(rows, 2, keys, 8, generator=generator)
    visible = torch.randint(1, keys - width + 1, (rows,), generator=generator)
    visible[0] = 1
    position = torch.arange(keys)[None, None, :]
    query = torch.arange(width)[None, :, None]
    mask = position < (visible[:, None, None] + query + 1).clamp(max=keys)
    return q.to(dtype), k.to(dtype), v.to(dtype), mask[:, None]


def test_grouped_attention_equals_sdpa_with_grouped_query_heads() -> None:
    for rows, width, keys in [(1, 1, 5), (8, 1, 40), (9, 4, 33), (16, 7, 64)]:
        q, k, v, mask = random_case(rows, width, keys)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        torch.testing.assert_close(grouped_attention(q, k, v, mask), expected)


def test_grouped_attention_in_bfloat16_is_as_close_to_float32_as_sdpa() -> None:
    q, k, v, mask = random_case(32, 1, 130)
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*low, attn_mask=mask, enable_gqa=True)
    grouped = grouped_attention(*low, mask)
    assert grouped.dtype == torch.bfloat16
    sdpa_error = (sdpa.float() - exact).abs().mean()
    grouped_error = (grouped.float() - exact).abs().mean()
    assert grouped_error <= 1.25 * sdpa_error


def test_a_query_without_keys_gets_an_average_not_nan() -> None:
    q, k, v, mask = random_case(2, 1, 6)
    mask[1] = False
    out = grouped_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], v[1].mean(dim=1).repeat_interleave(3, dim=0)[:, None])


def test_grouped_matmuls_take_only_narrow_forwards_of_enough_rows() -> None:
    assert prefers_grouped(torch.bfloat16, torch.device("cpu"))
    assert not prefers_grouped(torch.float32, torch.device("cpu"))
    assert not prefers_grouped(torch.bfloat16, torch.device("cuda"))
    q, k, v, mask = random_case(GROUPED_MIN_ROWS, 4, 20)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.equal(attention(q, k, v, mask, grouped=False), sdpa)
    assert torch.equal(attention(q, k, v, mask, grouped=True), grouped_attention(q, k, v, mask))
    small = [t[: GROUPED_MIN_ROWS - 1] for t in (q, k, v, mask)]
    assert torch.equal(
        attention(*small, grouped=True),
        F.scaled_dot_product_attention(*small[:3], attn_mask=small[3], enable_gqa=True),
    )


def test_compact_forward_with_grouped_attention_gives_the_same_states(
    tiny_llama: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return grouped_attention(*args)

    monkeypatch.setattr(engine.attention, "grouped_attention", counted)
    runners = [
        ModelRunner(tiny_llama, num_slots=8, max_model_len=64, max_candidates=3, native=True)
        for _ in range(2)
    ]
    runners[1].native.grouped_attention = True
    prompts = [[3 + row, 17, 33 + row, 2][: 1 + row % 4] for row in range(8)]
    candidates = [[11 + row, 12, 13][: 1 + row % 3] for row in range(8)]
    outputs = []
    for runner in runners:
        runner.extend(list(range(8)), prompts)
        step = runner.tree_step(list(range(8)), candidates)
        outputs.append((runner.logits(step.final), step.hidden))
    assert len(calls) == 2 * tiny_llama.config.num_hidden_layers  # prefill and step, grouped
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
