"""Sampling parameters and the pure tensor math that turns next-token logits into tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence draws its tokens (OpenAI/vLLM semantics; temperature 0 is greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    json_schema: str | None = None  # JSON Schema the output must match (vLLM only)


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits with top-k and top-p (nucleus) filtering applied."""
    scaled = logits.float() / max(params.temperature, 1e-5)
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= params.top_p
        # The most likely token always stays, however small top_p (5e-324 is 0 in float32).
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def token_logprobs(
    logits: torch.Tensor, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top` most likely tokens (ids, logprobs).

    Raw model log-probabilities, before temperature and filtering (as vLLM reports them).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if top <= 0:
        return float(logprobs[token]), []
    best = torch.topk(logprobs, min(top, logprobs.shape[-1]))
    alternatives = list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return float(logprobs[token]), alternatives


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Draw one token id from a [vocab] logits row."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(filtered_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
