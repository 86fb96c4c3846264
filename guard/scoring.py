"""Token-Guard scoring math (seed 004, Eq. 4-18): pure functions on float32 tensors."""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

_EPS = 1e-8


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dim, broadcasting leading dims; 0 for zero vectors."""
    return F.cosine_similarity(a, b, dim=-1, eps=_EPS)


def update_running_mean(mean: torch.Tensor, count: int, h: torch.Tensor) -> torch.Tensor:
    """Eq. 4/7: add h to a mean of `count` states (the mean starts as h_x with count 1)."""
    return mean + (h - mean) / (count + 1)


def token_scores(
    candidate_hidden: torch.Tensor,
    running_mean: torch.Tensor,
    candidate_probs: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Eq. 5-6: F_tok = lam * cos(h_t^(i), hbar_<t) + (1 - lam) * P(a_t^(i)), shape [M]."""
    return lam * cosine(candidate_hidden, running_mean) + (1 - lam) * candidate_probs


def probe_token_scores(
    candidate_risk: torch.Tensor, candidate_probs: torch.Tensor, lam: float
) -> torch.Tensor:
    """Eq. 5-6 with the probe: F_tok = lam * (1 - P(unsupported | h)) + (1 - lam) * P(a)."""
    return lam * (1 - candidate_risk) + (1 - lam) * candidate_probs


def unscored_bound(unscored_probs: torch.Tensor, lam: float) -> float:
    """The highest F_tok (Eq. 6) a candidate not yet evaluated could reach: its hidden-state
    term (cos, or 1 - probe risk) is at most 1, so F_tok <= lam + (1 - lam) P(a); -inf if none.

    A scored candidate at or above this bound is the choice Eq. 7 makes among all of them.
    """
    if len(unscored_probs) == 0:
        return float("-inf")
    return lam + (1 - lam) * float(unscored_probs.max())


def select_candidate(
    scores: torch.Tensor, tau_token: float, banned: torch.Tensor | None = None
) -> tuple[int, bool]:
    """Eq. 7: best non-banned candidate and whether its score passes tau_token."""
    allowed = torch.ones_like(scores, dtype=torch.bool) if banned is None else ~banned
    if not bool(allowed.any()):
        raise ValueError("all candidates are banned")
    best = int(scores.masked_fill(~allowed, float("-inf")).argmax())
    return best, bool(scores[best] >= tau_token)


@dataclass(frozen=True, eq=False)
class SegmentScore:
    """Stage-2 scores of one segment, its representation H_k and the norm of its f vector."""

    token_score: float
    consistency: float
    alignment: float
    total: float
    representation: torch.Tensor
    score_norm: float


def score_segment(
    f: torch.Tensor,
    hidden: torch.Tensor,
    h_x: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
) -> SegmentScore:
    """Eq. 8-12: softmax(f)-weighted H_k and F_tok(C_k), consistency, alignment, F_seg.

    Consistency uses the mean cosine of consecutive states floored at 0 (1 for one token),
    not the printed 1 - mean L2 distance, which is never positive for raw hidden states.
    """
    w = torch.softmax(f, dim=0)
    representation = w @ hidden
    token_score = float(w @ f)
    pairs = cosine(hidden[:-1], hidden[1:])
    consistency = float(pairs.mean().clamp_min(0.0)) if len(pairs) else 1.0
    alignment = float(cosine(representation, h_x))
    total = alpha * token_score + beta * consistency + gamma * alignment
    score_norm = float(torch.linalg.vector_norm(f))
    return SegmentScore(token_score, consistency, alignment, total, representation, score_norm)


def segment_decision(
    total: float, tau_low: float, tau_high: float
) -> Literal["accept", "refine", "discard"]:
    """Stage-2 decision: accept at >= tau_high, refine in [tau_low, tau_high), else discard."""
    if total >= tau_high:
        return "accept"
    return "refine" if total >= tau_low else "discard"


def refinement_window(f: torch.Tensor) -> tuple[int, int]:
    """Eq. 13: [start, end) of {a_(i-1), a_i^low, a_(i+1)} around argmin f, clipped."""
    low = int(f.argmin())
    return max(low - 1, 0), min(low + 2, len(f))


def fact_score(
    totals: torch.Tensor,
    score_norms: torch.Tensor,
    evidence: torch.Tensor,
    normalize_by_k: bool,
) -> float:
    """Eq. 14 with E_k as a gate: F_fact = [1/K] sum_k w_k F_seg(C_k) * min_k E_k.

    w_k = |f_k| / sum_j |f_j| (uniform when the denominator is 0). The paper puts E_k inside
    the weights, where an unsupported claim only shifts weight between segments (with one
    segment it changes nothing); as a factor, the least supported segment bounds the chain.
    The printed 1/K only if normalize_by_k.
    """
    k = len(totals)
    if k == 0:
        raise ValueError("a chain needs at least one segment")
    denom = float(score_norms.sum())
    w = score_norms / denom if denom != 0 else torch.full_like(totals, 1.0 / k)
    fact = float(w @ totals) * float(evidence.min())
    return fact / k if normalize_by_k else fact


def probe_fact_score(answer_risk: float, evidence: torch.Tensor) -> float:
    """Eq. 14 with the probe: F_fact = (1 - the answer's probe risk) * min_k E_k.

    The probe's answer-level risk is the score measured to separate right from wrong answers;
    the segment totals' consistency and alignment terms (cosines of anisotropic states) do not.
    """
    return (1.0 - answer_risk) * float(evidence.min())


def logic_score(representations: torch.Tensor, mean_embeddings: torch.Tensor) -> float:
    """Eq. 15-16: mean over k of lam_k cos(H_k, H_k+1), lam_k = (1 + cos(e_k, e_k+1)) / 2.

    One segment has nothing to be inconsistent with: F_logic = 1.
    """
    k = len(representations)
    if k == 0:
        raise ValueError("a chain needs at least one segment")
    if k == 1:
        return 1.0
    lam = (1 + cosine(mean_embeddings[:-1], mean_embeddings[1:])) / 2
    return float((lam * cosine(representations[:-1], representations[1:])).mean())


def global_score(f_fact: float, f_logic: float) -> float:
    """Eq. 17: soft minimum F_fact F_logic / (F_fact + F_logic - F_fact F_logic); 0 if 0/0."""
    denom = f_fact + f_logic - f_fact * f_logic
    return 0.0 if denom == 0 else f_fact * f_logic / denom


def adjust_thresholds(
    f_fact: float, f_logic: float, tau_low: float, tau_high: float, delta_tau: float
) -> tuple[float, float]:
    """Eq. 18: new (tau_low, tau_high) after a failed global check.

    "Low" and "high" are read relative to each other: F_fact < F_logic raises tau_high by
    delta_tau (stricter segments); F_logic < F_fact lowers tau_low (fewer discards); equal
    scores change nothing. Results are clamped to [0, 1] with tau_low <= tau_high.
    """
    if f_fact < f_logic:
        tau_high = min(tau_high + delta_tau, 1.0)
    elif f_logic < f_fact:
        tau_low = max(tau_low - delta_tau, 0.0)
    return min(tau_low, tau_high), tau_high
