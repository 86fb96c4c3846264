"""Token-level advantages for BALTO and the baselines it is compared with (seed 003, §3 and §5)."""

import torch

from balto.config import AdvantageMethod

HALLUCINATED = -1
NEUTRAL = 0
FAITHFUL = 1


_FIXED_POSITIVE = {AdvantageMethod.PA0: 0.0, AdvantageMethod.PA03: 0.3, AdvantageMethod.PA1: 1.0}


def _checked_labels(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return the labels with positions outside ``mask`` set to neutral, after checking values."""
    if labels.is_floating_point() or (labels.abs() > 1).any():
        raise ValueError("token labels must be -1 (hallucinated), 0 (neutral) or +1 (faithful)")
    if mask is None:
        return labels
    return torch.where(mask.bool(), labels, NEUTRAL)


def balanced_advantages(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced token advantages of BALTO (Eq. 5), per response (last dimension).

    ``A_t = -1`` on hallucinated tokens, ``n_H / n_F`` on faithful tokens, 0 on neutral ones,
    so ``sum_H A + sum_F A = 0`` whenever both sets are non-empty (Eq. 6). A response without
    hallucinated tokens gets all zeros; one without faithful tokens keeps only the -1 part.
    ``labels`` is ``[T]`` or ``[B, T]``; positions outside ``mask`` count as neutral.
    """
    labels = _checked_labels(labels, mask)
    is_h = labels == HALLUCINATED
    is_f = labels == FAITHFUL
    n_h = is_h.sum(dim=-1, keepdim=True)
    n_f = is_f.sum(dim=-1, keepdim=True)
    positive = n_h / n_f.clamp(min=1)
    return torch.where(is_h, -1.0, 0.0) + torch.where(is_f, positive, 0.0)


def fixed_positive_advantages(
    labels: torch.Tensor, positive: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fixed-value token advantages of the PA ablations (Table 2): -1 on H, ``positive`` on F.

    Unlike Eq. 5 the faithful credit is not balanced against the hallucinated one, so faithful
    tokens are rewarded in hallucination-free responses too (the RLFH-style reading of PA).
    """
    labels = _checked_labels(labels, mask)
    return torch.where(labels == HALLUCINATED, -1.0, 0.0) + torch.where(
        labels == FAITHFUL, positive, 0.0
    )


def grpo_binary_rewards(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO_B response rewards (§5 baselines): 1 if a response has no hallucinated token, else 0.

    ``labels`` is ``[G, T]``; returns ``[G]``.
    """
    labels = _checked_labels(labels, mask)
    return (~(labels == HALLUCINATED).any(dim=-1)).to(torch.get_default_dtype())


def grpo_density_rewards(
    n_supported: torch.Tensor, n_claims: torch.Tensor, no_claim_reward: float = 1.0
) -> torch.Tensor:
    """GRPO_D response rewards (§5 baselines, App. E.1): the fraction of supported claims.

    A response with no checkable claim has nothing unsupported, so by default it scores 1, the
    same verdict GRPO_B and the Faith. metric give it; ``no_claim_reward`` overrides that.
    """
    n_supported = n_supported.to(torch.get_default_dtype())
    n_claims = n_claims.to(torch.get_default_dtype())
    if (n_supported < 0).any() or (n_supported > n_claims).any():
        raise ValueError("need 0 <= n_supported <= n_claims")
    fraction = n_supported / n_claims.clamp(min=1)
    return torch.where(n_claims > 0, fraction, no_claim_reward)


def group_normalized(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative GRPO advantage ``(r - mean) / (std + eps)`` over one prompt's ``[G]`` rewards.

    Uses the population std, as in the paper's Bernoulli analysis (§4, ``std = sqrt(p(1-p))``);
    a group whose rewards are all equal gets all zeros.
    """
    centred = rewards - rewards.mean()
    return centred / (rewards.std(correction=0) + eps)


def broadcast_to_tokens(group_advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every response token its response's scalar advantage (GRPO, §2.2); 0 off the mask."""
    return group_advantage.unsqueeze(-1) * mask.to(group_advantage.dtype)


def fspo_advantages(group_advantage: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """FSPO token advantages (App. E.1): the GRPO_D advantage with label-aware sign flips.

    Each token starts from its response's advantage ``[B]``; a hallucinated token with a
    positive advantage gets its negation, a faithful token with a negative advantage gets its
    negation. Neutral tokens keep the response advantage. Returns ``[B, T]``.
    """
    labels = _checked_labels(labels, None)
    token_adv = group_advantage.unsqueeze(-1).expand(labels.shape)
    disagrees = ((labels == HALLUCINATED) & (token_adv > 0)) | (
        (labels == FAITHFUL) & (token_adv < 0)
    )
    return torch.where(disagrees, -token_adv, token_adv)


def compute_advantages(
    method: AdvantageMethod | str,
    labels: torch.Tensor,
    mask: torch.Tensor,
    n_supported: torch.Tensor | None = None,
    n_claims: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token advantages ``[G, T]`` for a group of G responses to one prompt, zero off ``mask``.

    ``labels`` and ``mask`` are ``[G, T]``; the claim counts ``[G]`` are needed by GRPO_D and FSPO.
    """
    method = AdvantageMethod(method)
    if method is AdvantageMethod.BALTO:
        return balanced_advantages(labels, mask)
    if method in _FIXED_POSITIVE:
        return fixed_positive_advantages(labels, _FIXED_POSITIVE[method], mask)
    if method is AdvantageMethod.GRPO_B:
        return broadcast_to_tokens(group_normalized(grpo_binary_rewards(labels, mask)), mask)
    if n_supported is None or n_claims is None:
        raise ValueError(f"method {method.value!r} needs n_supported and n_claims")
    group_advantage = group_normalized(grpo_density_rewards(n_supported, n_claims))
    if method is AdvantageMethod.GRPO_D:
        return broadcast_to_tokens(group_advantage, mask)
    return fspo_advantages(group_advantage, labels) * mask.to(group_advantage.dtype)


def length_charges(
    lengths: torch.Tensor, truncated: torch.Tensor, limit: int, buffer: int, penalty: float
) -> torch.Tensor:
    """Length charge ``[G]`` of each response of a group (DAPO's soft overlong punishment,
    arXiv 2503.14476, Eq. 13): ``penalty`` when ``truncated`` marks it as cut at ``limit``
    tokens; with ``buffer`` > 0, a share rising linearly from 0 at ``limit - buffer`` tokens to
    all of ``penalty`` at ``limit`` for the others (``lengths``, in tokens).

    Token-level faithful credit rewards every supported token, so quoting the context until the
    limit costs nothing; this charges the responses that run long.
    """
    share = truncated.float()
    if buffer > 0:
        ramp = ((lengths.float() - (limit - buffer)) / buffer).clamp(0.0, 1.0)
        share = torch.maximum(share, ramp)
    return penalty * share


def content_rewards(n_supported: torch.Tensor, weight: float, claims: int = 1) -> torch.Tensor:
    """``weight`` ``[G]`` shared out over the first ``claims`` supported claims of each response:
    ``weight * min(n_supported, claims) / claims`` (with ``claims=1``: all of it for answering).

    Token-level advantages charge an unsupported claim more than they credit a supported one
    while the base model gets about half its claims wrong, so a response without claims is the
    safe choice once quoting the context at length is charged; this pays for answering, and with
    ``claims`` > 1 for saying as much as the base model does (BALTO's Info., App. E.2).
    """
    if claims < 1:
        raise ValueError("claims must be >= 1")
    return weight * n_supported.clamp(max=claims).float() / claims


def gold_rewards(found: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight`` ``[G]`` for each response that contains its prompt's gold answer (``found``).

    An outcome reward on the training lines' gold answers: the claim verifier pays for a
    supported sentence whether or not it answers the question, so quoting any true sentence of
    the context scores as well as the answer; this pays for the answer itself.
    """
    return weight * found.float()


def add_response_terms(
    advantages: torch.Tensor, mask: torch.Tensor, terms: torch.Tensor
) -> torch.Tensor:
    """``advantages`` ``[G, T]`` of one group plus each response's term ``[G]`` less the group's
    mean term, on every token inside ``mask`` (GRPO's in-group baseline: a term shared by the
    whole group moves nothing)."""
    centred = (terms - terms.mean()).to(advantages.dtype)
    return advantages + centred[:, None] * mask.to(advantages.dtype)


def hold_hallucination_penalty(
    with_terms: torch.Tensor, token_advantages: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``with_terms`` ``[G, T]`` with each hallucinated token's advantage kept at or below its
    token-level one (``token_advantages``): response terms may lower it but never raise it.

    With the gold and content rewards added to every token, an unsupported claim inside an
    answer that earns them is charged ``-1 + bonus``, close to nothing; held, it pays its -1
    whatever the answer around it earns.
    """
    _checked_labels(labels, None)
    return torch.where(
        labels == HALLUCINATED, torch.minimum(with_terms, token_advantages), with_terms
    )
