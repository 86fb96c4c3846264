"""Choosing guard thresholds on development lines under an abstention budget (numpy only).

An item abstains when the guard gives no answer; it is correct when the gold answer is in the
answer. Accuracy is the share correct among the answered items. Calibration maximises that
accuracy while the share of abstentions stays within a budget; ties go to the higher coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
from pydantic import BaseModel, Field, model_validator

from groundedqa.datasets import HALUEVAL
from groundedqa.halueval import check_dev_lines
from groundedqa.metrics import risk_coverage
from guard.calibration import THRESHOLDS, CalibrationFigures, ChainSetting, GuardCalibration
from guard.config import GuardConfig

_SLACK = 1e-12  # float slack when comparing an abstention share with the budget


def _check_budget(max_abstention: float) -> None:
    if not 0.0 <= max_abstention <= 1.0:
        raise ValueError(f"max_abstention must be within [0, 1] (got {max_abstention})")


def threshold_for_budget(
    confidences: Sequence[float], correct: Sequence[bool], max_abstention: float
) -> float:
    """The confidence threshold that maximises accuracy among kept items within the budget.

    Items with confidence < threshold abstain; the share abstaining is at most
    `max_abstention`. Candidates are the observed confidences (tied items go together); of
    equally accurate thresholds the lowest, i.e. the one keeping most items, wins.
    """
    _check_budget(max_abstention)
    if not confidences:
        raise ValueError("no items to calibrate on")
    n = len(confidences)
    curve = risk_coverage(confidences, correct)  # one point per distinct confidence
    feasible = [p for p in curve if n - round(p.coverage * n) <= max_abstention * n + _SLACK]
    # The lowest risk (highest accuracy among kept items), then the most items kept.
    return min(feasible, key=lambda point: (point.risk, -point.coverage)).threshold


class SettingResult(BaseModel):
    """One evaluated guard setting: its thresholds and, per item, answered? and correct?"""

    thresholds: dict[str, float]
    answered: list[bool]
    correct: list[bool] = Field(description="Gold answer in the answer; ignored when unanswered.")

    @model_validator(mode="after")
    def _same_items(self) -> Self:
        if len(self.answered) != len(self.correct) or not self.answered:
            raise ValueError("answered and correct need one flag per item, for at least one item")
        return self


def figures_of(result: SettingResult) -> CalibrationFigures:
    """Coverage, abstention rate and accuracy among answered of one evaluated setting."""
    answered = np.asarray(result.answered, dtype=bool)
    correct = np.asarray(result.correct, dtype=bool)
    coverage = float(answered.mean())
    accuracy = float(correct[answered].mean()) if answered.any() else None
    return CalibrationFigures(
        n=len(answered),
        coverage=coverage,
        abstention_rate=1.0 - coverage,
        gold_in_answer_answered=accuracy,
    )


def pick_setting(
    results: Sequence[SettingResult], max_abstention: float
) -> tuple[SettingResult, CalibrationFigures]:
    """The setting with the best accuracy among answered whose abstention rate is in budget.

    Ties go to the higher coverage, then to the earlier setting. A setting that answers
    nothing has no accuracy and is never picked; ValueError when no setting qualifies.
    """
    _check_budget(max_abstention)
    eligible = [
        (result, figures)
        for result in results
        if (figures := figures_of(result)).gold_in_answer_answered is not None
        and figures.abstention_rate <= max_abstention + _SLACK
    ]
    if not eligible:
        raise ValueError(f"no setting answers anything within an abstention of {max_abstention}")
    # max() keeps the first of equal keys: the earlier setting.
    return max(eligible, key=lambda pair: (pair[1].gold_in_answer_answered, pair[1].coverage))


def best_threshold(
    thresholds: Sequence[float],
    answered: np.ndarray,
    correct: np.ndarray,
    max_abstention: float,
) -> int:
    """Index of the threshold whose outcome is most accurate among answered within the budget.

    `answered` and `correct` are [thresholds, items]: what each threshold leaves answered and
    whether that answer holds the gold one (the answer may change with the threshold, as when
    chains are chosen among those passing it). Ties go to the higher coverage, then to the
    lower threshold. ValueError when no threshold answers anything within the budget.
    """
    _check_budget(max_abstention)
    answered = np.asarray(answered, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    if answered.shape != correct.shape or answered.shape[0] != len(thresholds):
        raise ValueError("need one row of answered and correct flags per threshold")
    kept = answered.sum(axis=1)
    feasible = (answered.shape[1] - kept <= max_abstention * answered.shape[1] + _SLACK) & (
        kept > 0
    )
    if not feasible.any():
        raise ValueError(f"no threshold answers anything within an abstention of {max_abstention}")
    accuracy = (answered & correct).sum(axis=1) / np.maximum(kept, 1)
    return max(np.flatnonzero(feasible), key=lambda i: (accuracy[i], kept[i], -thresholds[i]))


def calibrate(
    results: Sequence[SettingResult],
    max_abstention: float,
    first_line: int,
    last_line: int,
    dataset: str = HALUEVAL,
    chains: ChainSetting | None = None,
) -> GuardCalibration:
    """Pick the best setting within the budget (see `pick_setting`) and record it with the
    chain setting it was decoded with.

    Thresholds a setting does not name keep guard's defaults. On HaluEval, only development
    lines may have been calibrated on (ValueError otherwise).
    """
    if dataset == HALUEVAL:
        check_dev_lines(first_line, last_line)
    chosen, figures = pick_setting(results, max_abstention)
    defaults = GuardConfig()
    thresholds = {name: chosen.thresholds.get(name, getattr(defaults, name)) for name in THRESHOLDS}
    return GuardCalibration(
        **(chains or ChainSetting()).model_dump(),
        **thresholds,
        max_abstention=max_abstention,
        dataset=dataset,
        first_line=first_line,
        last_line=last_line,
        achieved=figures,
    )
