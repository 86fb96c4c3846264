"""Hand-worked checks of the Token-Guard scoring math (seed 004, Eq. 4-18)."""

import math

import pytest
import torch

from guard import scoring

LN3 = math.log(3.0)


def t(*values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_cosine_orthogonal_parallel_opposite_and_zero() -> None:
    a = t([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0])
    b = t([0.0, 1.0], [2.0, 0.0], [-3.0, 0.0], [1.0, 1.0])
    assert scoring.cosine(a, b).tolist() == pytest.approx([0.0, 1.0, -1.0, 0.0])


def test_cosine_broadcasts_leading_dims() -> None:
    out = scoring.cosine(t([1.0, 0.0], [0.0, 2.0], [1.0, 1.0]), t(1.0, 0.0))
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([1.0, 0.0, 1 / math.sqrt(2)])


def test_update_running_mean() -> None:
    # mean of {h_x=[1,1]} plus [3,5] -> [2,3]; mean [0,0] of 3 states plus [4,8] -> [1,2]
    assert scoring.update_running_mean(t(1.0, 1.0), 1, t(3.0, 5.0)).tolist() == [2.0, 3.0]
    assert scoring.update_running_mean(t(0.0, 0.0), 3, t(4.0, 8.0)).tolist() == [1.0, 2.0]


def test_token_scores() -> None:
    hidden = t([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    scores = scoring.token_scores(hidden, t(1.0, 0.0), t(0.5, 0.3, 0.2), lam=0.6)
    # 0.6*1 + 0.4*0.5, 0.6*0 + 0.4*0.3, 0.6*(-1) + 0.4*0.2
    assert scores.tolist() == pytest.approx([0.8, 0.12, -0.52])


def test_select_candidate_best_passing_and_banned() -> None:
    scores = t(0.3, 0.8, 0.5)
    assert scoring.select_candidate(scores, 0.4, None) == (1, True)
    assert scoring.select_candidate(scores, 0.4, torch.tensor([False, True, False])) == (2, True)
    assert scoring.select_candidate(scores, 0.4, torch.tensor([False, True, True])) == (0, False)


def test_unscored_bound_caps_what_an_unevaluated_candidate_could_score() -> None:
    assert scoring.unscored_bound(t(0.2, 0.1), 0.6) == pytest.approx(0.6 + 0.4 * 0.2)
    assert scoring.unscored_bound(t(0.3), 0.0) == pytest.approx(0.3)
    assert scoring.unscored_bound(torch.empty(0), 0.6) == float("-inf")
    # No hidden-state term (at most 1) lifts a candidate above the bound.
    probs, lam = t(0.25, 0.05), 0.6
    best = scoring.token_scores(torch.ones(2, 3), torch.ones(3), probs, lam).max()
    assert float(best) <= scoring.unscored_bound(probs, lam) + 1e-6
    assert float(scoring.probe_token_scores(torch.zeros(2), probs, lam).max()) == pytest.approx(
        scoring.unscored_bound(probs, lam)
    )


def test_select_candidate_none_passes_takes_best() -> None:
    assert scoring.select_candidate(t(0.1, 0.2), 0.4) == (1, False)


def test_select_candidate_all_banned_raises() -> None:
    with pytest.raises(ValueError):
        scoring.select_candidate(t(0.9, 0.8), 0.4, torch.tensor([True, True]))


def test_score_segment_two_tokens() -> None:
    # softmax([0, ln 3]) = [0.25, 0.75]; H = [0.25, 0.75]; states orthogonal -> consistency 0
    seg = scoring.score_segment(
        t(0.0, LN3), t([1.0, 0.0], [0.0, 1.0]), t(1.0, 1.0), alpha=0.5, beta=0.3, gamma=0.2
    )
    alignment = 1 / math.sqrt(1.25)  # cos([0.25, 0.75], [1, 1]) = 1 / (sqrt(0.625) sqrt(2))
    assert seg.representation.tolist() == pytest.approx([0.25, 0.75])
    assert seg.token_score == pytest.approx(0.75 * LN3)
    assert seg.consistency == pytest.approx(0.0)
    assert seg.alignment == pytest.approx(alignment)
    assert seg.total == pytest.approx(0.5 * 0.75 * LN3 + 0.2 * alignment)
    assert seg.score_norm == pytest.approx(LN3)


def test_score_segment_consistency_mean_and_floor() -> None:
    # equal f -> equal weights 1/3; consecutive cosines 1 and 0 -> consistency 0.5
    seg = scoring.score_segment(
        t(0.5, 0.5, 0.5), t([1.0, 0.0], [1.0, 0.0], [0.0, 1.0]), t(1.0, 0.0), 0.5, 0.3, 0.2
    )
    assert seg.consistency == pytest.approx(0.5)
    assert seg.representation.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert seg.token_score == pytest.approx(0.5)
    opposite = scoring.score_segment(
        t(0.5, 0.5), t([1.0, 0.0], [-1.0, 0.0]), t(1.0, 0.0), 0.5, 0.3, 0.2
    )
    assert opposite.consistency == 0.0


def test_score_segment_single_token() -> None:
    seg = scoring.score_segment(t(0.7), t([0.0, 2.0]), t(0.0, 1.0), 0.5, 0.3, 0.2)
    assert seg.token_score == pytest.approx(0.7)
    assert seg.consistency == 1.0
    assert seg.alignment == pytest.approx(1.0)
    assert seg.total == pytest.approx(0.35 + 0.3 + 0.2)
    assert seg.representation.tolist() == pytest.approx([0.0, 2.0])


@pytest.mark.parametrize(
    ("total", "expected"),
    [(0.9, "accept"), (0.75, "accept"), (0.6, "refine"), (0.55, "refine"), (0.5, "discard")],
)
def test_segment_decision(total: float, expected: str) -> None:
    assert scoring.segment_decision(total, 0.55, 0.75) == expected


@pytest.mark.parametrize(
    ("f", "window"),
    [
        ([0.9, 0.2, 0.8, 0.7], (0, 3)),
        ([0.1, 0.5, 0.8, 0.7], (0, 2)),
        ([0.9, 0.5, 0.8, 0.3], (2, 4)),
        ([0.4], (0, 1)),
    ],
)
def test_refinement_window(f: list[float], window: tuple[int, int]) -> None:
    assert scoring.refinement_window(t(*f)) == window


def test_fact_score_weights_and_optional_1_over_k() -> None:
    # w = [1, 3] / 4 = [0.25, 0.75] -> 0.25*0.8 + 0.75*0.4 = 0.5
    args = (t(0.8, 0.4), t(1.0, 3.0), t(1.0, 1.0))
    assert scoring.fact_score(*args, normalize_by_k=False) == pytest.approx(0.5)
    assert scoring.fact_score(*args, normalize_by_k=True) == pytest.approx(0.25)


def test_fact_score_evidence_gates_instead_of_weighting() -> None:
    # The least supported segment bounds F_fact, also with a single segment.
    assert scoring.fact_score(t(0.8, 0.4), t(1.0, 3.0), t(1.0, 0.5), False) == pytest.approx(0.25)
    assert scoring.fact_score(t(0.9), t(2.0), t(0.0), False) == pytest.approx(0.0)
    assert scoring.fact_score(t(0.9), t(2.0), t(0.5), False) == pytest.approx(0.45)


def test_fact_score_zero_denominator_uses_uniform_weights() -> None:
    assert scoring.fact_score(t(0.8, 0.4), t(0.0, 0.0), t(1.0, 1.0), False) == pytest.approx(0.6)


def test_probe_token_scores() -> None:
    scores = scoring.probe_token_scores(t(0.1, 0.9), t(0.5, 0.5), lam=0.6)
    assert scores.tolist() == pytest.approx([0.6 * 0.9 + 0.2, 0.6 * 0.1 + 0.2])


def test_fact_score_single_segment() -> None:
    assert scoring.fact_score(t(0.7), t(2.0), t(1.0), True) == pytest.approx(0.7)


def test_logic_score() -> None:
    reps = t([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])  # consecutive cosines 1, 0
    same = t([1.0, 0.0], [1.0, 0.0], [1.0, 0.0])  # lam = 1, 1
    assert scoring.logic_score(reps, same) == pytest.approx(0.5)
    turned = t([1.0, 0.0], [0.0, 1.0], [0.0, 1.0])  # lam = 0.5, 1
    assert scoring.logic_score(reps, turned) == pytest.approx((0.5 * 1 + 1 * 0) / 2)
    opposite = t([1.0, 0.0], [-1.0, 0.0])  # lam = 0
    assert scoring.logic_score(t([1.0, 0.0], [1.0, 0.0]), opposite) == pytest.approx(0.0)


def test_logic_score_single_segment_is_one() -> None:
    assert scoring.logic_score(t([1.0, 0.0]), t([0.0, 1.0])) == 1.0


def test_global_score() -> None:
    assert scoring.global_score(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    assert scoring.global_score(1.0, 0.6) == pytest.approx(0.6)
    assert scoring.global_score(0.8, 0.0) == 0.0
    assert scoring.global_score(0.0, 0.0) == 0.0


def test_adjust_thresholds() -> None:
    low_fact = scoring.adjust_thresholds(0.3, 0.9, 0.55, 0.75, 0.1)
    assert low_fact == pytest.approx((0.55, 0.85))
    low_logic = scoring.adjust_thresholds(0.9, 0.3, 0.55, 0.75, 0.1)
    assert low_logic == pytest.approx((0.45, 0.75))
    assert scoring.adjust_thresholds(0.6, 0.6, 0.55, 0.75, 0.1) == (0.55, 0.75)


def test_adjust_thresholds_clamps() -> None:
    assert scoring.adjust_thresholds(0.3, 0.9, 0.9, 0.95, 0.1) == pytest.approx((0.9, 1.0))
    assert scoring.adjust_thresholds(0.9, 0.3, 0.05, 0.75, 0.1) == pytest.approx((0.0, 0.75))


def test_probe_fact_score_is_gated_by_the_least_supported_segment() -> None:
    assert scoring.probe_fact_score(0.2, t(1.0, 1.0)) == pytest.approx(0.8)
    assert scoring.probe_fact_score(0.2, t(1.0, 0.5)) == pytest.approx(0.4)
