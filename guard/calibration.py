"""A model's calibrated guard thresholds and chain setting, as the server loads them.

guardfit chooses them on development lines (`guardserve guard calibrate`) and saves them beside
the model's probe; the record keeps the abstention budget and what the setting achieved there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, Field, model_validator

from guard.config import ChainChoice

THRESHOLDS = ("lam", "tau_token", "tau_low", "tau_high", "tau_global")


class CalibrationFigures(BaseModel):
    """What a setting achieved on the lines it was evaluated on."""

    n: int
    coverage: float = Field(description="Share answered.")
    abstention_rate: float = Field(description="Share not answered: 1 - coverage.")
    gold_in_answer_answered: float | None = Field(description="Share correct among answered.")


class ChainSetting(BaseModel):
    """How many chains a guarded request decodes and how its answer is chosen among them."""

    chains: int = Field(1, ge=1, le=8, description="Chains decoded side by side.")
    chain_choice: ChainChoice = Field(
        "paper", description="How the answer is chosen among the chains that passed."
    )
    sampling_temperature: float = Field(
        0.4, ge=0.0, le=5.0, description="Sampling temperature of the chains after the first."
    )
    prefer_supported: bool = Field(
        False, description="Choose among the passing chains the claim verifier supports, if any."
    )


class GuardCalibration(ChainSetting):
    """Guard thresholds and chains chosen on development lines, the budget, and what they
    achieved there."""

    lam: float = Field(0.6, ge=0.0, le=1.0, description="Weight of the hidden-state term in F_tok.")
    tau_token: float = Field(ge=0.0, le=1.0)
    tau_low: float = Field(ge=0.0, le=1.0)
    tau_high: float = Field(ge=0.0, le=1.0)
    tau_global: float = Field(ge=0.0, le=1.0)
    max_abstention: float = Field(ge=0.0, le=1.0)
    dataset: str = Field("halueval", description="Dataset fitted on: halueval or a JSONL path.")
    first_line: int = Field(ge=1, description="First dataset line fitted on (1-based).")
    last_line: int = Field(ge=1, description="Last dataset line fitted on.")
    achieved: CalibrationFigures

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.tau_low > self.tau_high:
            raise ValueError(f"tau_low ({self.tau_low}) must be <= tau_high ({self.tau_high})")
        if self.first_line > self.last_line:
            raise ValueError(f"lines {self.first_line}-{self.last_line} are not a range")
        return self

    def guard_options(self) -> dict[str, Any]:
        """The thresholds and chain setting as per-request guard overrides (the `guard` field)."""
        return {name: getattr(self, name) for name in (*THRESHOLDS, *ChainSetting.model_fields)}

    def save(self, path: Path) -> None:
        """Write the calibration as indented JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a calibration written by `save`."""
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
