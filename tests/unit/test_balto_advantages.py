"""Unit tests for BALTO's token advantages and the baseline advantage schemes."""

import math

import pytest
import torch

from balto.advantages import (
    AdvantageMethod,
    add_response_terms,
    balanced_advantages,
    broadcast_to_tokens,
    compute_advantages,
    content_rewards,
    fixed_positive_advantages,
    fspo_advantages,
    gold_rewards,
    group_normalized,
    grpo_binary_rewards,
    grpo_density_rewards,
    hold_hallucination_penalty,
    length_charges,
)


def t(values: list) -> torch.Tensor:
    return torch.tensor(values)


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def test_balanced_one_hallucinated_two_faithful() -> None:
    close(balanced_advantages(t([-1, 1, 1, 0])), [-1.0, 0.5, 0.5, 0.0])


def test_balanced_more_hallucinated_than_faithful() -> None:
    # n_H = 3, n_F = 2: each faithful token gets 3/2
    close(balanced_advantages(t([1, -1, 0, -1, -1, 1])), [1.5, -1.0, 0.0, -1.0, -1.0, 1.5])


def test_balanced_batch_is_per_response_and_respects_mask() -> None:
    labels = t([[-1, 1, 0, 1], [1, 1, -1, -1]])
    mask = t([[1, 1, 1, 0], [1, 1, 1, 1]])
    # row 0: the masked faithful token does not count, so n_H = n_F = 1
    close(balanced_advantages(labels, mask), [[-1.0, 1.0, 0.0, 0.0], [1.0, 1.0, -1.0, -1.0]])


def test_balanced_no_hallucination_gives_zeros() -> None:
    close(balanced_advantages(t([1, 1, 0, 1])), [0.0, 0.0, 0.0, 0.0])
    close(balanced_advantages(t([0, 0, 0])), [0.0, 0.0, 0.0])


def test_balanced_no_faithful_keeps_only_negative_part() -> None:
    close(balanced_advantages(t([-1, 0, -1, 0])), [-1.0, 0.0, -1.0, 0.0])


def test_balanced_zero_sum_over_random_labels() -> None:
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(-1, 2, (200, 16), generator=gen)
    labels[:10] = torch.randint(0, 2, (10, 16), generator=gen)  # some without hallucination
    labels[10:20] = torch.randint(-1, 1, (10, 16), generator=gen)  # some without faithful
    adv = balanced_advantages(labels)
    n_h = (labels == -1).sum(-1)
    n_f = (labels == 1).sum(-1)
    both = (n_h > 0) & (n_f > 0)
    assert both.sum() > 100 and (n_h == 0).any() and ((n_f == 0) & (n_h > 0)).any()
    factual_sum = (adv * (labels != 0)).sum(-1)
    torch.testing.assert_close(factual_sum[both], torch.zeros(int(both.sum())))
    assert (adv[n_h == 0] == 0).all()
    torch.testing.assert_close(factual_sum[n_f == 0], -n_h[n_f == 0].float())
    assert (adv[labels == 0] == 0).all() and (adv[labels == -1] == -1).all()


@pytest.mark.parametrize("bad", [t([0, 2, 1]), t([0.0, 1.0])])
def test_invalid_labels_are_rejected(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        balanced_advantages(bad)


def test_fixed_positive_advantages() -> None:
    close(fixed_positive_advantages(t([-1, 1, 0, 1]), 0.3), [-1.0, 0.3, 0.0, 0.3])
    close(fixed_positive_advantages(t([-1, 1, 0]), 0.0), [-1.0, 0.0, 0.0])
    # not balanced: a hallucination-free response still rewards its faithful tokens
    close(fixed_positive_advantages(t([1, 0, 1]), 1.0), [1.0, 0.0, 1.0])


def test_grpo_binary_rewards() -> None:
    labels = t([[1, 0, 1], [1, -1, 0], [0, 0, 0], [-1, 1, 1]])
    close(grpo_binary_rewards(labels), [1.0, 0.0, 1.0, 0.0])
    mask = t([[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]])  # hides row 3's hallucination
    close(grpo_binary_rewards(labels, mask), [1.0, 0.0, 1.0, 1.0])


def test_grpo_density_rewards() -> None:
    n_supported, n_claims = t([3, 1, 0, 0]), t([4, 2, 0, 3])
    close(grpo_density_rewards(n_supported, n_claims), [0.75, 0.5, 1.0, 0.0])
    close(grpo_density_rewards(n_supported, n_claims, no_claim_reward=0.0), [0.75, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError):
        grpo_density_rewards(t([3]), t([2]))


def test_group_normalized() -> None:
    # rewards 1,0,0,0: mean 1/4, population std sqrt(3)/4
    close(group_normalized(t([1.0, 0.0, 0.0, 0.0])), [math.sqrt(3)] + [-1 / math.sqrt(3)] * 3)
    close(group_normalized(t([0.5, 0.5, 0.5])), [0.0, 0.0, 0.0])
    close(group_normalized(t([1.0])), [0.0])


def test_broadcast_to_tokens() -> None:
    mask = t([[1, 1, 0], [1, 0, 0]])
    close(broadcast_to_tokens(t([2.0, -1.0]), mask), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


def test_fspo_flips_disagreeing_tokens() -> None:
    labels = t([[-1, 1, 0], [-1, 1, 0], [-1, 1, 0]])
    adv = fspo_advantages(t([0.5, -2.0, 0.0]), labels)
    close(adv, [[-0.5, 0.5, 0.5], [-2.0, 2.0, -2.0], [0.0, 0.0, 0.0]])


# A group of four responses (T = 4) used for the dispatcher, worked by hand:
# density rewards 4/4, 3/4, 1/4, 0/4 -> mean 1/2, population std sqrt(10)/8,
# so GRPO_D advantages are a = 4/sqrt(10), b = 2/sqrt(10), -b, -a.
GROUP_LABELS = t([[1, 1, 0, 0], [-1, 1, 0, 0], [1, -1, -1, 0], [-1, 0, 0, 0]])
GROUP_MASK = t([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
N_SUPPORTED, N_CLAIMS = t([4, 3, 1, 0]), t([4, 4, 4, 4])
A, B = 4 / math.sqrt(10), 2 / math.sqrt(10)
S3 = math.sqrt(3)

EXPECTED = {
    "balto": [[0, 0, 0, 0], [-1, 1, 0, 0], [2, -1, -1, 0], [-1, 0, 0, 0]],
    "pa0": [[0, 0, 0, 0], [-1, 0, 0, 0], [0, -1, -1, 0], [-1, 0, 0, 0]],
    "pa0.3": [[0.3, 0.3, 0, 0], [-1, 0.3, 0, 0], [0.3, -1, -1, 0], [-1, 0, 0, 0]],
    "pa1": [[1, 1, 0, 0], [-1, 1, 0, 0], [1, -1, -1, 0], [-1, 0, 0, 0]],
    # binary rewards 1, 0, 0, 0
    "grpo_b": [[S3, S3, S3, 0], [-1 / S3] * 4, [-1 / S3] * 4, [-1 / S3, -1 / S3, 0, 0]],
    "grpo_d": [[A, A, A, 0], [B] * 4, [-B] * 4, [-A, -A, 0, 0]],
    # row 1: hallucinated token under a positive advantage flips; row 2: faithful under negative
    "fspo": [[A, A, A, 0], [-B, B, B, B], [B, -B, -B, -B], [-A, -A, 0, 0]],
}


@pytest.mark.parametrize("method", list(AdvantageMethod))
def test_compute_advantages_dispatch(method: AdvantageMethod) -> None:
    adv = compute_advantages(method, GROUP_LABELS, GROUP_MASK, N_SUPPORTED, N_CLAIMS)
    close(adv, EXPECTED[method.value])


def test_compute_advantages_accepts_strings_and_checks_inputs() -> None:
    close(compute_advantages("pa0.3", GROUP_LABELS, GROUP_MASK), EXPECTED["pa0.3"])
    with pytest.raises(ValueError):
        compute_advantages("ppo", GROUP_LABELS, GROUP_MASK)
    with pytest.raises(ValueError):
        compute_advantages("grpo_d", GROUP_LABELS, GROUP_MASK)


def test_cut_responses_pay_the_charge_and_long_ones_a_share_of_it() -> None:
    lengths = torch.tensor([4, 6, 7, 5, 8])
    truncated = torch.tensor([False, False, False, True, True])
    assert torch.allclose(
        length_charges(lengths, truncated, 8, 4, 0.4), torch.tensor([0.0, 0.2, 0.3, 0.4, 0.4])
    )
    assert torch.equal(
        length_charges(lengths, truncated, 8, 0, 0.4), torch.tensor([0.0, 0.0, 0.0, 0.4, 0.4])
    )


def test_content_reward_pays_responses_with_a_supported_claim() -> None:
    assert torch.equal(content_rewards(torch.tensor([0, 1, 3]), 0.5), torch.tensor([0.0, 0.5, 0.5]))


def test_content_reward_is_shared_over_supported_claims_up_to_the_cap() -> None:
    paid = content_rewards(torch.tensor([0, 1, 2, 4, 9]), 1.0, claims=4)
    assert torch.equal(paid, torch.tensor([0.0, 0.25, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError):
        content_rewards(torch.tensor([1]), 1.0, claims=0)


def test_gold_reward_pays_responses_that_contain_the_answer() -> None:
    found = torch.tensor([True, False, True])
    assert torch.equal(gold_rewards(found, 0.75), torch.tensor([0.75, 0.0, 0.75]))


def test_response_terms_are_centred_on_the_group_and_cover_every_token() -> None:
    advantages = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.5, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    moved = add_response_terms(advantages, mask, torch.tensor([-0.5, 0.0]))
    assert torch.equal(moved, torch.tensor([[0.75, -1.25, -0.25], [0.75, 0.75, 0.0]]))
    assert torch.equal(add_response_terms(advantages, mask, torch.tensor([0.3, 0.3])), advantages)


def test_held_hallucinated_tokens_never_gain_from_response_terms() -> None:
    labels = torch.tensor([[-1, 1, 0], [-1, 1, 1]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    token = balanced_advantages(labels, mask)
    with_terms = add_response_terms(token, mask, torch.tensor([1.0, -1.0]))
    held = hold_hallucination_penalty(with_terms, token, labels)
    # the rewarded response's hallucinated token keeps its -1, the charged one's pays -2
    close(held, [[-1.0, 2.0, 1.0], [-2.0, -0.5, -0.5]])
    with pytest.raises(ValueError):
        hold_hallucination_penalty(with_terms, token, labels.float())
