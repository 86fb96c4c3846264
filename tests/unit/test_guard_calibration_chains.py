"""Calibrating tau_global over several chains: the server's choice replayed at each threshold."""

from __future__ import annotations

import pytest

from guard.calibration import ChainSetting
from guard.report import GlobalReport, GuardReport
from guardfit.calibration_run import GuardedAnswer, chosen_answer, with_chain_threshold

CONSENSUS = ChainSetting(chains=3, chain_choice="consensus", sampling_temperature=0.7)


def answer(
    line: int, text: str, f_global: float, correct: bool, supported: bool | None = None
) -> GuardedAnswer:
    check = GlobalReport(
        f_fact=f_global, f_logic=1.0, f_global=f_global, iterations=0, tau_low=0, tau_high=0
    )
    return GuardedAnswer(line, text, GuardReport(global_check=check), correct, supported)


def test_chosen_answer_is_the_consensus_of_the_chains_passing_the_threshold() -> None:
    chains = [
        answer(1, "Lyon is the capital.", 0.9, False),
        answer(1, "Paris is the capital.", 0.5, True),
        answer(1, "The capital is Paris.", 0.4, True),
    ]
    assert chosen_answer(chains, 0.0, CONSENSUS, clusters=3).correct
    assert chosen_answer(chains, 0.45, CONSENSUS, clusters=3).text in (
        "Lyon is the capital.",
        "Paris is the capital.",
    )
    assert chosen_answer(chains, 0.6, CONSENSUS, clusters=3).text == "Lyon is the capital."
    assert chosen_answer(chains, 0.95, CONSENSUS, clusters=3) is None
    paper = ChainSetting(chains=3, chain_choice="paper")
    assert chosen_answer(chains, 0.0, paper, clusters=3).text == "Lyon is the capital."


def test_chain_threshold_spends_the_budget_on_the_least_confident_items() -> None:
    agreeing = [answer(1, "Paris is the capital.", 0.8, True)] * 3
    doubtful = [answer(2, f"Answer {w} here.", 0.2, False) for w in ("one", "two", "three")]
    sure = [answer(3, "Rome it is.", 0.7, True)] * 3
    bern = answer(4, "Bern.", 0.6, False)
    mixed = [bern, answer(4, "Zurich.", 0.3, True), bern]
    items = [agreeing, doubtful, sure, mixed]
    result = with_chain_threshold({"lam": 0.0}, items, 0.25, CONSENSUS, clusters=3)
    assert result.answered == [True, False, True, True]
    assert result.thresholds["lam"] == 0.0
    assert 0.2 < result.thresholds["tau_global"] <= 0.3
    assert result.correct == [True, False, True, False]
    keep_all = with_chain_threshold({}, items, 0.0, CONSENSUS, clusters=3)
    assert keep_all.thresholds["tau_global"] == pytest.approx(0.0)
    assert all(keep_all.answered)


def test_chosen_answer_prefers_supported_chains_when_the_setting_asks() -> None:
    chains = [
        answer(1, "Paris is the capital.", 0.9, True, supported=False),
        answer(1, "The capital is Paris.", 0.8, True, supported=False),
        answer(1, "Lyon is the capital.", 0.5, False, supported=True),
    ]
    prefer = CONSENSUS.model_copy(update={"prefer_supported": True})
    assert chosen_answer(chains, 0.0, CONSENSUS, clusters=3).correct
    assert chosen_answer(chains, 0.0, prefer, clusters=3).text == "Lyon is the capital."
    # Lyon fails the threshold: the passing chains are chosen from as if none were checked.
    assert chosen_answer(chains, 0.6, prefer, clusters=3).correct
