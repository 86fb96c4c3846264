"""Token-Guard hyperparameters (seed 004) with paper defaults and validated ranges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from verify.verifier import Verification

MAX_CANDIDATES = 16
# Ends a truncated (HALT-style) answer by default; HALT's training targets end with it too.
TRUNCATION_MARKER = "Unsure from here"
ChainChoice = Literal["paper", "consensus"]


class GuardConfig(BaseModel):
    """Settings for one guarded generation; server defaults merged with per-request overrides.

    Strict: `"yes"` is no bool and `"2"` no int; a request gets what it wrote or a 400.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(False, description="Run guarded generation for this request.")
    preset: Literal["calibrated", "paper"] = Field(
        "calibrated",
        description="Base settings: 'calibrated' (the model's probe and calibrated thresholds "
        "when it has them, else the paper's) or 'paper' (the paper's constants and scores, "
        "no probe, no claim rollback).",
    )
    mode: Literal["guard", "verify"] = Field(
        "guard",
        description="'guard': Token-Guard self-checking decoding; "
        "'verify': plain decoding whose answer is checked afterwards.",
    )
    num_candidates: int = Field(
        4,
        ge=1,
        le=MAX_CANDIDATES,
        description="M: candidate tokens per step (Eq. 5); the likeliest is evaluated first, "
        "the others only when one of them could outscore it.",
    )
    lam: float = Field(
        0.6, ge=0.0, le=1.0, description="lambda: weight of hidden-state cosine vs. probability."
    )
    tau_token: float = Field(
        0.4, ge=0.0, le=1.0, description="tau_token: minimum token score to pass (Eq. 7)."
    )
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Segment weight of token score (Eq. 12).")
    beta: float = Field(0.3, ge=0.0, le=1.0, description="Segment weight of consistency (Eq. 12).")
    gamma: float = Field(0.2, ge=0.0, le=1.0, description="Segment weight of alignment (Eq. 12).")
    tau_low: float = Field(
        0.55, ge=0.0, le=1.0, description="Segments scoring below this are discarded."
    )
    tau_high: float = Field(
        0.75, ge=0.0, le=1.0, description="Segments scoring at least this are accepted."
    )
    n_max: int = Field(3, ge=0, le=10, description="N_max: local refinements per segment.")
    tau_global: float = Field(
        0.7, ge=0.0, le=1.0, description="Minimum global chain score to answer (Eq. 17)."
    )
    delta_tau: float = Field(
        0.1, ge=0.0, le=1.0, description="Segment-threshold adjustment per global retry (Eq. 18)."
    )
    m_max: int = Field(2, ge=0, le=10, description="M_max: global re-checks of a failing chain.")
    chains: int = Field(1, ge=1, le=8, description="Candidate chains sampled per request.")
    clusters: int = Field(
        3, ge=1, le=8, description="KMeans clusters over chains (3 small sets, 5 large)."
    )
    chain_choice: ChainChoice = Field(
        "paper",
        description="How the answer is chosen among chains that passed the global check: "
        "'paper' (KMeans representatives, the best F_global) or 'consensus' (the answer the "
        "other passing chains agree with most, by TF-IDF cosine).",
    )
    prefer_supported: bool = Field(
        False,
        description="With several chains: choose only among the passing chains whose whole "
        "answer the claim verifier (embeddings included) finds supported by the "
        "conversation's statements, when there are any.",
    )
    score_temperature: float = Field(
        0.3, gt=0.0, le=5.0, description="Softmax temperature of candidate probabilities."
    )
    sampling_temperature: float = Field(
        0.4, ge=0.0, le=5.0, description="Temperature for sampling among candidates; 0 is greedy."
    )
    max_segment_tokens: int = Field(
        48, ge=4, le=512, description="Length cap that closes a segment without a boundary."
    )
    segment_boundary: Literal["sentence", "clause", "line"] = Field(
        "sentence",
        description="What ends a segment: a sentence end, a clause end (also , ; :), "
        "or a newline. Shorter segments release text sooner when streaming.",
    )
    fact_normalize_by_k: bool = Field(
        False,
        description="Apply the 1/K printed in Eq. 14 to F_fact. Off by default, as in the "
        "public reference code: with it F_fact shrinks with the number of segments.",
    )
    use_evidence: bool = Field(
        True,
        description="E_k of Eq. 14 from the claim verifier against the conversation "
        "(share of the segment's claims it supports); off: E_k = 1.",
    )
    token_score: Literal["probe", "paper"] | None = Field(
        None,
        description="Hidden-state term of F_tok: 'probe' (1 - the model's hallucination probe "
        "risk) or 'paper' (cos(h, h-bar)); default: probe when the model has one.",
    )
    claim_rollback: bool = Field(
        True,
        description="A closed segment with a claim the verifier finds unsupported is rolled "
        "back to that claim's first token, which is banned there, and re-decoded (at most "
        "n_max times); needs use_evidence.",
    )
    include_claims: bool = Field(
        False, description="Add the answer's claims and their verdicts to the report."
    )
    on_failure: Literal["refuse", "truncate"] = Field(
        "refuse",
        description="On a failed check: refuse outright, or keep the accepted prefix "
        "and append the truncation marker (HALT-style partial answer).",
    )
    refusal_message: str = Field(
        "I cannot answer that reliably.",
        min_length=1,
        max_length=1000,
        description="Answer returned on refusal.",
    )
    truncation_marker: str = Field(
        TRUNCATION_MARKER,
        max_length=1000,
        description="Text appended where a truncated answer stops.",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.tau_low > self.tau_high:
            raise ValueError(f"tau_low ({self.tau_low}) must be <= tau_high ({self.tau_high})")
        if self.alpha + self.beta + self.gamma <= 0:
            raise ValueError("alpha + beta + gamma must be > 0")
        return self

    @classmethod
    def merged(cls, base: GuardConfig, overrides: dict[str, Any]) -> Self:
        """Apply per-request overrides (only the keys to change) to server defaults; re-validate.

        `preset: "paper"` starts from the paper's constants instead of the server defaults.
        """
        if overrides.get("preset") == "paper":
            base = cls.paper(enabled=base.enabled)
        return cls.model_validate({**base.model_dump(), **overrides})

    @classmethod
    def paper(cls, enabled: bool = False) -> Self:
        """The paper's Token-Guard: its constants, cos(h, h-bar) in F_tok, no claim rollback."""
        return cls(enabled=enabled, preset="paper", token_score="paper", claim_rollback=False)


@dataclass(frozen=True)
class SegmentEvidence:
    """What the claim verifier says of a segment: E_k (share of its claims the context
    supports, 1.0 without claims) and the char offset where its first unsupported claim starts."""

    share: float
    first_unsupported: int | None = None

    @classmethod
    def of(cls, verification: Verification) -> SegmentEvidence:
        """From the verifier's verdicts: where the earliest wrong span (or claim) starts."""
        starts = [
            v.wrong_span[0] if v.wrong_span else v.claim.start
            for v in verification.verdicts
            if not v.supported
        ]
        return cls(verification.faithful_share, min(starts) if starts else None)


EvidenceCheck = Callable[[str], SegmentEvidence]
AnswerCheck = Callable[[str], bool]


@dataclass(frozen=True)
class GuardRun:
    """A guarded generation's complete settings: what the guard engine and each of its
    guarded sequences receive, whole.

    `config`: the request's guard settings. `stream`: the client reads text as it comes, so
    accepted segments are released at once instead of after the global check. `evidence`: the
    claim verifier's view of a segment's text against the conversation (E_k of Eq. 14, the
    claim to roll back); None means E_k = 1. `answer_check`: whether the claim verifier finds a
    whole answer supported, for choosing among chains (`prefer_supported`); None: chains are
    chosen without it. `explore`: this chain samples among the passing candidates (the extra
    chains of `config.chains`) instead of keeping the best one.
    """

    config: GuardConfig
    stream: bool = False
    evidence: EvidenceCheck | None = None
    answer_check: AnswerCheck | None = None
    explore: bool = False
