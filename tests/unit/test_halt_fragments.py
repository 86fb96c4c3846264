"""HALT fragments, targets and figures on hand-made responses and verifier verdicts."""

from __future__ import annotations

import pytest

from guard.config import TRUNCATION_MARKER, GuardConfig
from halt.fragments import (
    Fragment,
    JudgedResponse,
    is_truncated,
    judge_fragments,
    split_spans,
    stated_content,
)
from halt.metrics import halt_figures, harmonic_f1, response_completeness
from halt.targets import choose_target, keep_flags, position_rates, target_text
from verify.claims import Claim
from verify.verifier import ClaimVerdict, Verification

RESPONSE = "Yes, Paris is the capital of France, and it has 2 million people. Berlin is in Spain."


def verification(text: str, claims: dict[str, bool]) -> Verification:
    """Verdicts on the first occurrence of each claim text: supported or not."""
    verdicts = []
    for claim_text, supported in claims.items():
        start = text.index(claim_text)
        claim = Claim(
            text=claim_text,
            start=start,
            end=start + len(claim_text),
            kind="entity",
            normalized=claim_text.lower(),
            sentence=(0, len(text)),
        )
        span = None if supported else (claim.start, claim.end)
        verdicts.append(
            ClaimVerdict(
                claim=claim, supported=supported, score=1.0, method="exact", wrong_span=span
            )
        )
    return Verification(verdicts=verdicts)


RESPONSE_VERIFICATION = verification(
    RESPONSE, {"Paris": True, "France": True, "2 million": False, "Berlin": True, "Spain": False}
)


def test_clauses_carry_their_claims_and_a_claimless_piece_joins_the_next() -> None:
    fragments = judge_fragments(RESPONSE, RESPONSE_VERIFICATION, gold="Paris")
    assert [f.text for f in fragments] == [
        "Yes, Paris is the capital of France,",
        "and it has 2 million people.",
        "Berlin is in Spain.",
    ]
    assert [f.claims for f in fragments] == [
        ["Paris", "France"],
        ["2 million"],
        ["Berlin", "Spain"],
    ]
    assert [f.unsupported for f in fragments] == [[], ["2 million"], ["Spain"]]
    assert [f.correct for f in fragments] == [True, False, False]
    assert all(RESPONSE[f.start : f.end] == f.text for f in fragments)


def test_sentence_boundary_and_a_missing_gold_answer_blame_the_first_fragment() -> None:
    sentences = judge_fragments(RESPONSE, RESPONSE_VERIFICATION, gold="Paris", boundary="sentence")
    assert [f.text for f in sentences] == [RESPONSE.split(" Berlin")[0], "Berlin is in Spain."]
    assert [f.correct for f in sentences] == [False, False]

    supported = verification(RESPONSE, {"Paris": True, "France": True, "Berlin": True})
    fragments = judge_fragments(RESPONSE, supported, gold="Paris")
    assert [f.text for f in fragments] == [RESPONSE.split(" Berlin")[0], "Berlin is in Spain."]
    assert [f.correct for f in fragments] == [True, True]
    assert [f.correct for f in judge_fragments(RESPONSE, supported, gold="Lyon")] == [False, True]


def test_no_cut_inside_a_claim_and_claimless_responses_are_one_fragment() -> None:
    text = "He lived in Washington, D.C. for years."
    assert split_spans(text, [(12, 28)]) == [(0, len(text))]
    assert split_spans(text, []) == [(0, len(text))]
    assert split_spans("  ", []) == []
    yes = judge_fragments("Yes.", Verification(verdicts=[]), gold="yes")
    assert [(f.text, f.claims, f.correct) for f in yes] == [("Yes.", [], True)]
    assert not judge_fragments("Yes.", Verification(verdicts=[]), gold="no")[0].correct


def test_the_truncation_marker_is_no_content() -> None:
    truncated = "Paris is the capital... " + TRUNCATION_MARKER
    assert stated_content(truncated) == "Paris is the capital"
    assert is_truncated(truncated) and not is_truncated("Paris is the capital.")
    assert stated_content(TRUNCATION_MARKER) == ""
    assert judge_fragments(TRUNCATION_MARKER, Verification(verdicts=[]), gold="Paris") == []
    fragments = judge_fragments(
        truncated, verification("Paris is the capital", {"Paris": True}), "x"
    )
    assert [f.text for f in fragments] == ["Paris is the capital"]


def test_marker_is_the_guards() -> None:
    assert GuardConfig().truncation_marker == TRUNCATION_MARKER


def judged(pieces: list[str], correct: list[bool], finished: bool = True) -> JudgedResponse:
    """The response of `pieces` joined by spaces, each piece one hand-judged fragment."""
    fragments, start = [], 0
    for piece, ok in zip(pieces, correct, strict=True):
        end = start + len(piece)
        fragments.append(
            Fragment(start=start, end=end, text=piece, claims=[piece], unsupported=[], correct=ok)
        )
        start = end + 1
    return JudgedResponse(text=" ".join(pieces), finished=finished, fragments=fragments)


SAMPLES = [
    judged(["A is B,", "C is D.", "E is F."], [True, True, False]),
    judged(["A is B,", "G is H."], [True, False]),
    judged(["A is B,", "C is D.", "E is F,", "I is J."], [True, True, True, False]),
]


def test_position_rates_count_the_responses_reaching_each_position() -> None:
    rates = position_rates([[f.correct for f in s.fragments] for s in SAMPLES])
    assert rates == pytest.approx([1.0, 2 / 3, 1 / 2, 0.0])
    assert position_rates([]) == []


def test_cut_targets_at_two_thresholds() -> None:
    low = choose_target(SAMPLES, threshold=0.0, mode="cut")
    assert (low.sample, low.kept, low.stated) == (2, 3, 4)
    assert low.text == "A is B, C is D. E is F... " + TRUNCATION_MARKER
    assert low.completeness == pytest.approx(0.75)

    high = choose_target(SAMPLES, threshold=0.7, mode="cut")  # position 2 is right 2 times in 3
    assert (high.sample, high.kept, high.stated) == (0, 1, 3)  # equals: the earliest sample
    assert high.text == "A is B... " + TRUNCATION_MARKER
    assert not high.abstained

    whole = choose_target([judged(["A is B,", "C is D."], [True, True])], threshold=1.0, mode="cut")
    assert (whole.text, whole.kept) == ("A is B, C is D.", 2)  # nothing cut: no marker


def test_drop_targets_remove_wrong_fragments_and_keep_later_ones() -> None:
    response = judged(["A is B,", "G is H,", "C is D."], [True, False, True])
    assert keep_flags([True, False, True], [1.0, 1.0, 1.0], 0.0, "drop") == [True, False, True]
    assert keep_flags([True, False, True], [1.0, 1.0, 1.0], 0.0, "cut") == [True, False, False]
    assert target_text(response, [True, False, True], "drop") == "A is B, C is D."
    assert target_text(response, [True, True, False], "drop") == "A is B, G is H."
    low = choose_target(SAMPLES, threshold=0.0, mode="drop")
    assert (low.sample, low.kept) == (2, 3)
    assert low.text == "A is B, C is D. E is F."


def test_nothing_reliable_is_a_full_abstention_and_unfinished_ends_are_dropped() -> None:
    wrong_first = [judged(["G is H,", "C is D."], [False, True]), judged(["K is L."], [False])]
    target = choose_target(wrong_first, threshold=0.0, mode="cut")
    assert (target.text, target.kept, target.abstained) == (TRUNCATION_MARKER, 0, True)
    assert choose_target([judged([], [])], 0.5, "drop").text == TRUNCATION_MARKER

    unfinished = judged(["A is B,", "C is"], [True, True], finished=False)
    target = choose_target([unfinished], threshold=0.0, mode="cut")
    assert target.text == "A is B... " + TRUNCATION_MARKER
    with pytest.raises(ValueError):
        choose_target(SAMPLES, threshold=1.5, mode="cut")


def test_halt_figures_are_correctness_completeness_and_their_f1() -> None:
    base = [SAMPLES[0].fragments, SAMPLES[1].fragments, SAMPLES[2].fragments]
    halted = [SAMPLES[0].fragments[:2], [], SAMPLES[2].fragments[:3]]
    figures = halt_figures(halted, base)
    assert figures.correctness == pytest.approx(1.0)  # the abstention has no correctness
    assert figures.completeness == pytest.approx((2 / 3 + 0 + 3 / 4) / 3)
    assert figures.answered == pytest.approx(2 / 3)
    assert figures.f1 == pytest.approx(harmonic_f1(1.0, figures.completeness))
    own = halt_figures(base, base)
    assert own.correctness == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert own.completeness == 1.0 and own.fragments == pytest.approx(3.0)
    assert response_completeness(5, 2) == 1.0 and response_completeness(0, 0) == 1.0
    assert halt_figures([[]], [[]]).f1 is None
