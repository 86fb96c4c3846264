"""Evaluation metrics checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from groundedqa import metrics


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


def test_gold_in_answer_on_normalised_word_bounds() -> None:
    assert metrics.gold_in_answer("It opened in 1932.", "1932")
    assert metrics.gold_in_answer("The CEO is JANE PARK!", "Jane Park")
    assert not metrics.gold_in_answer("It opened in 19321.", "1932")  # not inside a word
    assert not metrics.gold_in_answer("Jane is the CEO.", "Jane Park")
    assert not metrics.gold_in_answer("anything", "The")  # nothing left of the gold answer


def test_coverage_and_abstention_precision_by_hand() -> None:
    abstained = [True, False, True, False, True]
    reference_wrong = [True, True, False, False, True]
    assert metrics.coverage(abstained) == pytest.approx(0.4)
    assert metrics.coverage(abstained) == 1.0 - metrics.abstention_rate(abstained)
    # Abstained on items 1, 3, 5; the reference was wrong on 1 and 5: precision 2/3.
    assert metrics.abstention_precision(abstained, reference_wrong) == pytest.approx(2 / 3)
    assert metrics.abstention_precision([False, False], [True, True]) is None
    with pytest.raises(ValueError):
        metrics.abstention_precision([True], [True, False])


def test_risk_coverage_curve_and_aurc_by_hand() -> None:
    # Ranked: 0.9 right, 0.8 wrong, 0.5 right, 0.1 wrong.
    curve = metrics.risk_coverage([0.5, 0.9, 0.1, 0.8], [True, True, False, False])
    assert [p.threshold for p in curve] == [0.9, 0.8, 0.5, 0.1]
    assert [p.coverage for p in curve] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [p.risk for p in curve] == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert metrics.aurc(curve) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_risk_coverage_keeps_ties_together() -> None:
    # Two items tie at 0.7 (one right, one wrong): no threshold keeps only one of them.
    curve = metrics.risk_coverage([0.9, 0.7, 0.7, 0.2], [True, False, True, True])
    assert [(p.threshold, p.coverage) for p in curve] == [(0.9, 0.25), (0.7, 0.75), (0.2, 1.0)]
    assert [p.risk for p in curve] == pytest.approx([0.0, 1 / 3, 0.25])
    assert metrics.aurc(curve) == pytest.approx(0.25 * 0 + 0.5 * (1 / 3) + 0.25 * 0.25)
    # One right ranked above one wrong: risk 0 then 1/2, area 1/4. All wrong: area one.
    assert metrics.aurc(metrics.risk_coverage([0.9, 0.1], [True, False])) == pytest.approx(0.25)
    assert metrics.aurc(metrics.risk_coverage([0.5, 0.4], [False, False])) == 1.0
    with pytest.raises(ValueError):
        metrics.risk_coverage([], [])
    with pytest.raises(ValueError):
        metrics.aurc([])


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n() -> None:
    small = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # mean 5/8
    wide = metrics.bootstrap_interval(small, seed=1)
    narrow = metrics.bootstrap_interval(small * 25, seed=1)  # same mean, 25x the items
    for interval in (wide, narrow):
        assert interval.estimate == pytest.approx(0.625)
        assert interval.low < interval.estimate < interval.high
    assert narrow.high - narrow.low < (wide.high - wide.low) / 2  # about 1/sqrt(25) as wide
    assert wide.low >= 0.0 and wide.high <= 1.0  # a share's resampled means stay shares


def test_bootstrap_interval_is_deterministic_for_a_seed() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert metrics.bootstrap_interval(values, seed=7) == metrics.bootstrap_interval(values, seed=7)
    assert metrics.bootstrap_interval(values, seed=7) != metrics.bootstrap_interval(values, seed=8)
    median = metrics.bootstrap_interval(values, np.median, seed=7)
    assert median.estimate == pytest.approx(3.5)
    with pytest.raises(ValueError):
        metrics.bootstrap_interval([1.0])


def test_paired_bootstrap_difference_of_identical_arrays_is_zero() -> None:
    values = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert metrics.paired_bootstrap_interval(values, values) == (0.0, 0.0, 0.0)
    # Shifted by one on every item: pairing makes every resampled difference exactly 1.
    shifted = [v + 1.0 for v in values]
    assert metrics.paired_bootstrap_interval(shifted, values) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        metrics.paired_bootstrap_interval([1.0, 0.0], [1.0])


def test_paired_bootstrap_ratio_and_product_by_hand() -> None:
    values = [1.0, 0.0, 1.0, 0.0] * 5  # mean 1/2
    reference = [1.0, 1.0, 1.0, 0.0] * 5  # mean 3/4
    ratio = metrics.paired_bootstrap_interval(values, reference, metrics.mean_ratio, seed=3)
    assert ratio.estimate == pytest.approx(2 / 3)
    assert ratio.low < 2 / 3 < ratio.high <= 1.0  # values <= reference on every item
    product = metrics.paired_bootstrap_interval(values, reference, metrics.mean_product)
    assert product.estimate == pytest.approx(0.375)
    assert product.low < 0.375 < product.high
