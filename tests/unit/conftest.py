"""Fixtures for unit tests: a tiny random-weight Llama built in memory."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def build_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 3-layer Llama with grouped-query attention and random weights, in float32."""
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


def build_tiny_tokenizer(vocab_size: int = 96) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny model's vocabulary: '<eos>', '.', '\\n', w3.. words."""
    vocab = {"<eos>": 0, ".": 1, "\n": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    backend = Tokenizer(WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer."""
    return build_tiny_tokenizer()
