"""Guard calibration: thresholds within an abstention budget, and the best of evaluated settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from guard.calibration import ChainSetting, GuardCalibration
from guard.config import GuardConfig
from guardfit.calibration import (
    SettingResult,
    best_threshold,
    calibrate,
    figures_of,
    pick_setting,
    threshold_for_budget,
)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences that are higher, on average, for the correct items (about 60% correct)."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.6
    confidences = np.clip(0.45 + 0.2 * correct + rng.normal(0.0, 0.15, n), 0.0, 1.0)
    return confidences, correct


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [0.0, 0.05, 0.2, 0.5])
def test_threshold_meets_budget_and_is_the_best_one(budget: float, seed: int) -> None:
    confidences, correct = synthetic(1000, seed)
    threshold = threshold_for_budget(list(confidences), list(correct), budget)
    kept = confidences >= threshold
    assert (~kept).sum() <= budget * len(kept)  # counted, so no float rounding
    accuracy = correct[kept].mean()
    assert accuracy >= correct.mean()  # abstaining on low confidence never hurts here
    # No other threshold within the budget does better (brute force over all of them).
    for other in np.unique(confidences):
        other_kept = confidences >= other
        if (~other_kept).sum() <= budget * len(kept):
            assert correct[other_kept].mean() <= accuracy + 1e-12


def test_a_larger_budget_buys_accuracy() -> None:
    confidences, correct = synthetic(2000, 3)
    accuracies = []
    for budget in (0.0, 0.1, 0.3):
        kept = confidences >= threshold_for_budget(list(confidences), list(correct), budget)
        accuracies.append(correct[kept].mean())
    assert accuracies[0] == pytest.approx(correct.mean())  # no budget: everything is kept
    assert accuracies[0] < accuracies[1] < accuracies[2]


def test_threshold_by_hand() -> None:
    confidences = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, False]
    assert threshold_for_budget(confidences, correct, 0.0) == 0.5  # keep all: 3/5
    assert threshold_for_budget(confidences, correct, 0.2) == 0.6  # drop one: 3/4
    assert threshold_for_budget(confidences, correct, 0.4) == 0.6  # 3/4 beats 2/3 at 0.7
    assert threshold_for_budget(confidences, correct, 0.6) == 0.8  # 2/2
    assert threshold_for_budget(confidences, correct, 0.8) == 0.8  # 0.9 and 0.8 tie: keep more
    # Tied confidences go together: dropping one 0.5 means dropping both (share 2/4 > 1/4).
    assert threshold_for_budget([0.9, 0.7, 0.5, 0.5], [True, True, False, False], 0.25) == 0.5
    with pytest.raises(ValueError):
        threshold_for_budget([0.5], [True], 1.5)
    with pytest.raises(ValueError):
        threshold_for_budget([0.5, 0.4], [True], 0.1)
    with pytest.raises(ValueError):
        threshold_for_budget([], [], 0.1)


def setting(tau_global: float, answered: list[bool], correct: list[bool]) -> SettingResult:
    return SettingResult(thresholds={"tau_global": tau_global}, answered=answered, correct=correct)


def test_pick_setting_by_hand() -> None:
    results = [
        # Answers 4/4, 2 right: accuracy 0.5.
        setting(0.5, [True, True, True, True], [True, True, False, False]),
        # Answers 1/4 (abstains 75%), 1 right: accuracy 1.0, but over a 50% budget.
        setting(0.9, [True, False, False, False], [True, False, False, False]),
        # Answers 2/4, both right: accuracy 1.0 at coverage 0.5.
        setting(0.8, [True, True, False, False], [True, True, True, True]),
        # Answers 3/4, 3 right: accuracy 1.0 at coverage 0.75, the tie-break winner.
        setting(0.7, [True, True, False, True], [True, True, False, True]),
        # Same figures as the previous one: the earlier setting stays.
        setting(0.65, [True, True, True, False], [True, True, True, False]),
    ]
    chosen, figures = pick_setting(results, max_abstention=0.5)
    assert chosen.thresholds == {"tau_global": 0.7}
    assert (figures.coverage, figures.gold_in_answer_answered) == (0.75, 1.0)
    assert figures.abstention_rate == pytest.approx(0.25) and figures.n == 4
    assert pick_setting(results, max_abstention=0.0)[0].thresholds == {"tau_global": 0.5}
    assert pick_setting(results, max_abstention=0.8)[0].thresholds == {"tau_global": 0.7}
    silent = setting(0.99, [False, False], [True, True])
    assert figures_of(silent).gold_in_answer_answered is None
    with pytest.raises(ValueError, match="no setting"):
        pick_setting([silent], max_abstention=1.0)
    with pytest.raises(ValidationError):
        SettingResult(thresholds={}, answered=[True], correct=[True, False])


def test_calibration_records_choice_and_round_trips(tmp_path: Path) -> None:
    results = [
        SettingResult(
            thresholds={"tau_global": 0.6, "tau_low": 0.5},
            answered=[True, True, False, True],
            correct=[True, False, False, True],
        ),
        SettingResult(thresholds={"tau_global": 0.4}, answered=[True] * 4, correct=[True] * 4),
    ]
    calibration = calibrate(results[:1], max_abstention=0.25, first_line=1, last_line=4)
    defaults = GuardConfig()
    assert (calibration.tau_global, calibration.tau_low) == (0.6, 0.5)
    assert (calibration.tau_token, calibration.tau_high) == (defaults.tau_token, defaults.tau_high)
    assert calibration.achieved.gold_in_answer_answered == pytest.approx(2 / 3)
    assert calibration.guard_options() == {
        "lam": defaults.lam,
        "tau_token": defaults.tau_token,
        "tau_low": 0.5,
        "tau_high": defaults.tau_high,
        "tau_global": 0.6,
        "chains": 1,
        "chain_choice": "paper",
        "sampling_temperature": defaults.sampling_temperature,
        "prefer_supported": False,
    }
    GuardConfig.model_validate(calibration.guard_options())  # valid guard overrides
    path = tmp_path / "calib" / "guard.json"
    calibration.save(path)
    assert GuardCalibration.load(path) == calibration
    best = calibrate(results, max_abstention=0.25, first_line=1, last_line=4)
    assert (best.tau_global, best.achieved.coverage) == (0.4, 1.0)
    chains = ChainSetting(
        chains=4, chain_choice="consensus", sampling_temperature=0.7, prefer_supported=True
    )
    with_chains = calibrate(results, 0.25, first_line=1, last_line=4, chains=chains)
    options = with_chains.guard_options()
    assert (
        options["chains"],
        options["chain_choice"],
        options["sampling_temperature"],
        options["prefer_supported"],
    ) == (4, "consensus", 0.7, True)
    config = GuardConfig.model_validate(options)
    assert (config.chain_choice, config.prefer_supported) == ("consensus", True)


def test_best_threshold_replays_answers_that_change_with_the_threshold() -> None:
    # Rows are thresholds; the answer to item 2 changes (wrong -> right) at the second one.
    answered = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    correct = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=bool)
    taus = [0.0, 0.3, 0.6]
    assert best_threshold(taus, answered, correct, max_abstention=0.0) == 0  # 2/4
    assert best_threshold(taus, answered, correct, max_abstention=0.25) == 1  # 2/3
    assert best_threshold(taus, answered, correct, max_abstention=0.75) == 2  # 1/1
    tied = np.array([[1, 1], [1, 1]], dtype=bool)
    assert best_threshold([0.2, 0.1], tied, tied, max_abstention=0.0) == 1  # lower threshold
    with pytest.raises(ValueError, match="no threshold"):
        best_threshold([0.5], np.zeros((1, 2), bool), np.zeros((1, 2), bool), 0.4)
    with pytest.raises(ValueError, match="one row"):
        best_threshold([0.5, 0.6], answered, correct, 0.1)


def test_calibration_refuses_release_lines_and_bad_thresholds() -> None:
    figures = figures_of(SettingResult(thresholds={}, answered=[True], correct=[True]))
    fields = {"tau_token": 0.4, "tau_low": 0.55, "tau_high": 0.75, "tau_global": 0.7}
    lines = {"max_abstention": 0.1, "first_line": 1, "last_line": 8000, "achieved": figures}
    GuardCalibration(**fields, **lines)
    result = SettingResult(thresholds={}, answered=[True], correct=[True])
    with pytest.raises(ValueError, match="development lines"):
        calibrate([result], 0.1, first_line=1, last_line=8001)
    GuardCalibration(**fields, **{**lines, "last_line": 9000, "dataset": "mine.jsonl"})
    with pytest.raises(ValidationError, match="tau_low"):
        GuardCalibration(**{**fields, "tau_low": 0.8}, **lines)
    with pytest.raises(ValidationError, match="range"):
        GuardCalibration(**fields, **{**lines, "first_line": 10, "last_line": 5})
