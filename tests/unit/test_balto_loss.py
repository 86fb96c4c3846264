"""Unit tests for BALTO's clipped surrogate loss, log-prob gathering and KL estimate."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from balto.advantages import balanced_advantages
from balto.loss import clipped_surrogate_loss, kl_to_reference, sequence_logprobs


def test_gradient_at_ratio_one_is_minus_advantage_over_z() -> None:
    labels = torch.tensor([[-1, 1, 1, 0], [1, 0, 0, 0]])
    mask = torch.ones_like(labels)
    adv = balanced_advantages(labels, mask)
    expected_adv = torch.tensor([[-1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected_adv)
    for normalizer, z in (("factual", 4), ("tokens", 8)):  # 3 + 1 factual tokens; 8 tokens
        logprobs = torch.full((2, 4), -1.5, requires_grad=True)
        out = clipped_surrogate_loss(
            logprobs, logprobs.detach(), adv, mask, labels=labels, normalizer=normalizer
        )
        out.loss.backward()
        torch.testing.assert_close(logprobs.grad, -expected_adv / z)
        assert out.loss.item() == pytest.approx(0.0)  # balanced: sum of A is 0
        assert out.n_tokens == z and out.mean_ratio == pytest.approx(1.0)
        assert out.clip_fraction == 0.0


def test_clipping_positive_advantage_at_1_28() -> None:
    ratios = torch.tensor([[1.2, 1.3, 1.5, 0.5]])
    logprobs = ratios.log().requires_grad_()
    adv = torch.ones(1, 4)
    out = clipped_surrogate_loss(
        logprobs, torch.zeros(1, 4), adv, torch.ones(1, 4), normalizer="tokens"
    )
    # min(r A, clip(r, 0.8, 1.28) A): 1.2, 1.28, 1.28, 0.5 (below the range a positive A is
    # not clipped: the min keeps the smaller, unclipped term)
    assert out.loss.item() == pytest.approx(-(1.2 + 1.28 + 1.28 + 0.5) / 4)
    out.loss.backward()
    # d(r A)/d logprob = r A where unclipped, 0 where clipped; loss = -J / Z
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.2, 0.0, 0.0, -0.5]]) / 4)
    assert out.clip_fraction == pytest.approx(2 / 4)


def test_clipping_negative_advantage_at_0_8() -> None:
    ratios = torch.tensor([[0.9, 0.7, 0.5, 1.5]])
    logprobs = ratios.log().requires_grad_()
    adv = -torch.ones(1, 4)
    out = clipped_surrogate_loss(
        logprobs, torch.zeros(1, 4), adv, torch.ones(1, 4), normalizer="tokens"
    )
    # min(-r, -clip(r)): -0.9, -0.8, -0.8, -1.5 (above the range a negative A is not clipped)
    assert out.loss.item() == pytest.approx((0.9 + 0.8 + 0.8 + 1.5) / 4)
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.9, 0.0, 0.0, 1.5]]) / 4)
    assert out.clip_fraction == pytest.approx(2 / 4)


def test_custom_clip_range() -> None:
    logprobs = torch.tensor([[math.log(1.15)]])
    out = clipped_surrogate_loss(
        logprobs, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
        clip_low=0.1, clip_high=0.1, normalizer="tokens",
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(-1.1)


def test_mask_excludes_padding_even_with_extreme_logprobs() -> None:
    logprobs = torch.tensor([[-1.0, 80.0]], requires_grad=True)
    mask = torch.tensor([[1, 0]])
    labels = torch.tensor([[1, 0]])
    out = clipped_surrogate_loss(
        logprobs, torch.full((1, 2), -1.0), torch.tensor([[2.0, 5.0]]), mask, labels=labels
    )
    assert out.loss.item() == pytest.approx(-2.0)
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-2.0, 0.0]]))
    assert out.mean_ratio == pytest.approx(1.0)


def test_no_factual_token_gives_zero_loss_with_graph() -> None:
    logprobs = torch.randn(2, 3, requires_grad=True)
    out = clipped_surrogate_loss(
        logprobs,
        logprobs.detach() - 0.1,
        torch.randn(2, 3),
        torch.ones(2, 3),
        labels=torch.zeros(2, 3, dtype=torch.long),
    )
    assert out.n_tokens == 0 and out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.zeros(2, 3))


def test_factual_normalizer_needs_labels() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        clipped_surrogate_loss(x, x, x, torch.ones(1, 2))


def test_sequence_logprobs_by_hand() -> None:
    # logits (0, ln 3) give probabilities (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    out = sequence_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]]))


def test_kl_to_reference_k3() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[1, 1, 0]])
    # token 1: d = ln(1/2) -> 1/2 - ln(1/2) - 1; token 2: d = 0 -> 0; token 3 masked out
    expected = (0.5 + math.log(2.0) - 1.0) / 2
    assert kl_to_reference(logprobs, ref, mask) == pytest.approx(expected)
    assert kl_to_reference(logprobs, logprobs, mask) == 0.0
    assert kl_to_reference(logprobs, ref, torch.zeros(1, 3)) == 0.0


def test_one_balto_step_moves_hallucinated_down_and_faithful_up() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(0, 64, (1, 16))
    prompt_len = 6
    # labels for the 10 response tokens (positions 6..15)
    labels = torch.zeros(1, 15, dtype=torch.long)
    labels[0, prompt_len - 1 :] = torch.tensor([0, 1, 1, 0, -1, -1, 0, 1, 1, 0])
    mask = torch.zeros(1, 15, dtype=torch.long)
    mask[0, prompt_len - 1 :] = 1

    def token_logprobs() -> torch.Tensor:
        logits = model(input_ids).logits[:, :-1]
        return sequence_logprobs(logits, input_ids[:, 1:])

    with torch.no_grad():
        before = token_logprobs()
    advantages = balanced_advantages(labels, mask)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = clipped_surrogate_loss(token_logprobs(), before, advantages, mask, labels=labels)
    assert out.n_tokens == 6
    out.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = token_logprobs()
    delta = after - before
    assert (delta[labels == -1] < 0).all()
    assert (delta[labels == 1] > 0).all()
