"""Fixtures for unit tests: a tiny random-weight Llama built in memory."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention and random weights, in float32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    """One tiny model per test module."""
    return build_tiny_llama()
