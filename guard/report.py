"""The `guard` report returned beside `choices`: segments, global scores, outcome and timings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from verify.verifier import ClaimVerdict

SegmentStatus = Literal["accepted", "refined", "discarded"]
Outcome = Literal["answered", "truncated", "refused"]


class SegmentReport(BaseModel):
    """Scores and fate of one candidate segment (Eq. 8-12)."""

    text: str
    token_score: float
    consistency: float
    alignment: float
    evidence: float = 1.0
    probe_risk: float | None = Field(
        None, description="Mean hallucination-probe risk of the segment's tokens."
    )
    total: float
    status: SegmentStatus
    refinements: int = 0


class GlobalReport(BaseModel):
    """Chain-level check (Eq. 14-18)."""

    f_fact: float
    f_logic: float
    f_global: float
    probe_risk: float | None = Field(
        None, description="Hallucination-probe risk of the answer's last token state."
    )
    iterations: int
    tau_low: float
    tau_high: float


class StageTimings(BaseModel):
    """Wall time spent per stage, in seconds; `check_s`: the claim verifier on the finished
    chains' answers (`prefer_supported`)."""

    token_s: float = 0.0
    segment_s: float = 0.0
    refinement_s: float = 0.0
    global_s: float = 0.0
    check_s: float = 0.0


class GuardReport(BaseModel):
    """Everything guarded generation decided for one choice."""

    model_config = ConfigDict(populate_by_name=True)

    mode: Literal["guard", "verify"] = "guard"
    outcome: Outcome = Field(
        "answered",
        description="answered; refused (the refusal message replaces the answer) or truncated "
        "(the trusted prefix and the truncation marker), whose choice then has the "
        "finish_reason content_filter, in streams and whole answers alike.",
    )
    reason: str | None = None
    segments: list[SegmentReport] = Field(default_factory=list)
    global_check: GlobalReport | None = Field(default=None, alias="global")
    timings: StageTimings = Field(default_factory=StageTimings)
    claims: list[ClaimVerdict] | None = Field(
        default=None, description="The answer's claims checked against the conversation."
    )
    hallucinated: bool | None = Field(
        default=None, description="Whether any claim of the answer is unsupported."
    )
    chains: int = 1
    chain_scores: list[float | None] = Field(
        default_factory=list, description="F_global per sampled chain (None: chain failed)."
    )
    chain_chosen: int = Field(0, description="Index of the chain whose answer was returned.")
    chain_supported: list[bool | None] = Field(
        default_factory=list,
        description="Per chain, whether the claim verifier found its whole answer supported "
        "(None: not checked, as for a failed chain); empty when chains were not checked.",
    )
    low_confidence_tokens: int = 0
    claim_rollbacks: int = Field(
        0, description="Segments rolled back to a claim the verifier found unsupported."
    )
