"""HALT's figures (pure): fragment correctness, completeness against a reference model, their F1.

Following HALT (arXiv 2506.04051, §4): a response's *correctness* is the share of correct
fragments among the fragments it states (halt.fragments); the model's correctness is its mean
over the responses that state at least one fragment (a full abstention states nothing and has
no correctness). A response's *completeness* is how much of the full response content it
retains: the fragments it states relative to those the reference (base) model states on the
same item, capped at 1 (1.0 where the reference states nothing); the model's completeness is
its mean over all items. F1 is the harmonic mean of the two.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from groundedqa.metrics import mean
from halt.fragments import Fragment


class HaltFigures(BaseModel):
    """One model's HALT figures over a set of items (plain means)."""

    correctness: float | None
    completeness: float
    f1: float | None
    answered: float
    fragments: float


def response_correctness(fragments: Sequence[Fragment]) -> float | None:
    """Share of the response's fragments that are correct; None when it states none."""
    return sum(f.correct for f in fragments) / len(fragments) if fragments else None


def response_completeness(n_stated: int, reference_n_stated: int) -> float:
    """Fragments stated relative to the reference response's, capped at 1."""
    return min(1.0, n_stated / reference_n_stated) if reference_n_stated else 1.0


def harmonic_f1(correctness: float | None, completeness: float) -> float | None:
    """Harmonic mean of correctness and completeness (None without correctness)."""
    if correctness is None:
        return None
    total = correctness + completeness
    return 2 * correctness * completeness / total if total else 0.0


def halt_figures(
    responses: Sequence[Sequence[Fragment]], reference: Sequence[Sequence[Fragment]]
) -> HaltFigures:
    """The figures of one model's responses against the reference model's, item by item."""
    if len(responses) != len(reference):
        raise ValueError("each response needs exactly one reference response")
    scores = [s for s in map(response_correctness, responses) if s is not None]
    correctness = mean(scores) if scores else None
    completeness = mean(
        [
            response_completeness(len(own), len(ref))
            for own, ref in zip(responses, reference, strict=True)
        ]
    )
    return HaltFigures(
        correctness=correctness,
        completeness=completeness,
        f1=harmonic_f1(correctness, completeness),
        answered=len(scores) / len(responses),
        fragments=mean([len(own) for own in responses]),
    )
