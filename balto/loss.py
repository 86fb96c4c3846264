"""BALTO's clipped token-level surrogate loss (seed 003, Eq. 7-8) and log-prob helpers."""

from dataclasses import dataclass
from typing import Literal

import torch

Normalizer = Literal["factual", "tokens"]


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate and detached diagnostics of one surrogate evaluation."""

    loss: torch.Tensor
    clip_fraction: float
    mean_ratio: float
    n_tokens: int


def clipped_surrogate_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    normalizer: Normalizer = "factual",
) -> LossOutput:
    """Negative of the clipped objective J of Eq. 7-8, all inputs ``[B, T]``.

    ``r_t = exp(logprobs - old_logprobs)``,
    ``J = (1/Z) sum_{i,t} min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)``
    with DAPO's asymmetric clip range. ``Z`` is the number of factual tokens (``labels != 0``
    under ``mask``, Eq. 8) for ``normalizer="factual"``, or the number of masked tokens for
    ``"tokens"`` (the GRPO baselines). With ``Z == 0`` the loss is a zero that keeps its graph.
    ``clip_fraction`` is the share of masked tokens with a non-zero advantage whose gradient
    the clip removed; ``mean_ratio`` is the mean ``r_t`` over masked tokens; ``n_tokens`` is Z.
    """
    mask = mask.bool()
    ratio = torch.exp(torch.where(mask, logprobs - old_logprobs, 0.0))  # padding: r = 1
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.minimum(ratio * advantages, clipped_ratio * advantages)
    if normalizer == "factual":
        if labels is None:
            raise ValueError('normalizer="factual" needs the token labels')
        z = int(((labels != 0) & mask).sum())
    else:
        z = int(mask.sum())
    objective = (per_token * mask).sum() * (1.0 / z if z > 0 else 0.0)

    with torch.no_grad():
        clipped = ((ratio > 1.0 + clip_high) & (advantages > 0)) | (
            (ratio < 1.0 - clip_low) & (advantages < 0)
        )
        active = mask & (advantages != 0)
        clip_fraction = float((clipped & active).sum() / active.sum().clamp(min=1))
        mean_ratio = float(ratio[mask].mean()) if mask.any() else 1.0
    return LossOutput(-objective, clip_fraction, mean_ratio, z)


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability ``[B, T]`` of each token under ``logits[B, T, V]`` (log-softmax, gathered).

    ``logits[:, t]`` must be the distribution that produced ``tokens[:, t]``; the caller shifts
    a causal LM's logits by one. Computed as ``logit - logsumexp`` in float32, which equals
    gathering ``log_softmax`` without materialising it over the vocabulary.
    """
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def kl_to_reference(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> float:
    """Mean per-token KL(pi_theta || pi_ref) over masked tokens with Schulman's k3 estimator.

    For tokens sampled from pi_theta, ``k3 = exp(d) - d - 1`` with ``d = ref_logprobs - logprobs``
    is an unbiased, always non-negative estimate of the KL divergence. Returns 0.0 for an
    empty mask; a monitoring value, detached from the graph.
    """
    mask = mask.bool()
    if not mask.any():
        return 0.0
    d = (ref_logprobs - logprobs).detach()[mask]
    return float((torch.exp(d) - d - 1.0).mean())
