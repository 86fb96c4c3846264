"""Evaluation metrics checked against values worked out by hand."""

from __future__ import annotations

import pytest

from evals import metrics


def test_normalize_answer_follows_squad() -> None:
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("An apple a day") == "apple day"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match() -> None:
    assert metrics.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert metrics.exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0


def test_f1_by_hand() -> None:
    # "jane park is ceo" vs "jane park": 2 common, P = 2/4, R = 2/2, F1 = 2/3.
    assert metrics.f1_score("Jane Park is the CEO.", "Jane Park") == pytest.approx(2 / 3)
    # Repeated tokens count once per gold occurrence: P = 1/3, R = 1, F1 = 1/2.
    assert metrics.f1_score("Paris, Paris, France", "Paris") == pytest.approx(0.5)
    assert metrics.f1_score("Berlin", "Paris") == 0.0
    assert metrics.f1_score("", "") == 1.0
    assert metrics.f1_score("the", "Paris") == 0.0  # nothing left after normalising


def test_faith_info_q_by_hand() -> None:
    faith = metrics.faithfulness([False, True, False, False])
    info = metrics.informativeness([3, 1, 2, 0], [2, 2, 2, 0])
    assert faith == pytest.approx(0.75)
    assert info == pytest.approx(0.75)  # 3>=2, 1<2, 2>=2, 0>=0
    assert metrics.q_score(faith, info) == pytest.approx(0.5625)
    with pytest.raises(ValueError):
        metrics.informativeness([1, 2], [1])
    with pytest.raises(ValueError):
        metrics.faithfulness([])


def test_abstention_and_hallucination_rates() -> None:
    hallucinated = [True, False, False, False]
    abstained = [False, False, True, True]
    assert metrics.abstention_rate(abstained) == pytest.approx(0.5)
    assert metrics.hallucination_rate(hallucinated, abstained) == pytest.approx(0.5)
    assert metrics.hallucination_rate([False, False], [True, True]) is None


def test_percentiles_interpolate_linearly() -> None:
    assert metrics.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    # p95 of 1..5: rank 0.95 * 4 = 3.8, between 4 and 5 -> 4.8.
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert metrics.percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        metrics.percentile([], 50)


def test_mean_and_throughput() -> None:
    assert metrics.mean([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert metrics.tokens_per_second(300, 1.5) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        metrics.tokens_per_second(10, 0.0)
