"""Chain selection: representatives by TF-IDF + KMeans, or the consensus answer."""

from engine.outputs import SequenceOutput
from guard.chains import (
    best_chain,
    chains_to_choose_from,
    choose_chain,
    consensus_chain,
    representative_chains,
)
from guard.report import GlobalReport, GuardReport

TOPICS = [
    "the revenue of acme grew to twelve billion dollars",
    "acme revenue grew to twelve billion dollars last year",
    "jane park is the chief executive of acme",
    "the chief executive of acme is jane park",
    "the headquarters stand in the city of springfield",
    "springfield is the city where the headquarters stand",
]


def test_few_texts_returns_all_indices() -> None:
    assert representative_chains([], 3) == []
    assert representative_chains(["a b", "c d"], 3) == [0, 1]
    assert representative_chains(["x y", "x y", "z w"], 3) == [0, 1, 2]


def test_one_representative_per_topic() -> None:
    chosen = representative_chains(TOPICS, n_clusters=3)
    assert len(chosen) == 3
    assert sorted({i // 2 for i in chosen}) == [0, 1, 2]
    assert chosen == sorted(chosen)


def test_deterministic_for_a_seed() -> None:
    assert representative_chains(TOPICS, 2, seed=7) == representative_chains(TOPICS, 2, seed=7)


def test_duplicates_collapse_to_one_cluster() -> None:
    chosen = representative_chains(["same answer here"] * 5, n_clusters=3)
    assert len(chosen) == 1
    assert 0 <= chosen[0] < 5


def test_duplicates_and_distinct_texts() -> None:
    texts = ["apple pie recipe", "apple pie recipe", "apple pie recipe", "rocket launch date"]
    chosen = representative_chains(texts, n_clusters=3)
    assert len(chosen) == 2
    assert 3 in chosen


def test_empty_texts_do_not_crash() -> None:
    assert representative_chains(["", "", "", ""], n_clusters=2) == [0]
    mixed = ["", "apple banana", "", "cherry date", "apple banana"]
    chosen = representative_chains(mixed, n_clusters=2)
    assert 1 <= len(chosen) <= 2
    assert all(0 <= i < len(mixed) for i in chosen)


def test_choose_chain_takes_the_best_scoring_representative() -> None:
    texts = ["Paris is the capital.", "Paris is the capital city.", "Lyon is big.", "refused"]
    scores = [0.8, 0.9, 0.75, None]
    chosen = choose_chain(texts, scores, n_clusters=3)
    assert chosen == 1


def test_choose_chain_skips_failed_chains_and_falls_back_to_the_first() -> None:
    assert choose_chain(["a b", "c d"], [None, 0.1], n_clusters=3) == 1
    assert choose_chain(["a b", "c d"], [None, None], n_clusters=3) == 0


def test_consensus_chain_takes_the_answer_the_others_repeat() -> None:
    texts = [
        "Lyon is the capital of France.",
        "Paris is the capital of France.",
        "The capital of France is Paris.",
        "France has Paris as its capital city.",
    ]
    assert consensus_chain(texts) in (1, 2)
    assert consensus_chain(["same words", "same words", "other thing"]) == 0  # tie: earliest
    assert consensus_chain(["only one"]) == 0
    assert consensus_chain(["", "", ""]) == 0


def _chain(text: str, f_global: float | None) -> SequenceOutput[GuardReport]:
    report = GuardReport(outcome="answered" if f_global is not None else "refused")
    if f_global is not None:
        report.global_check = GlobalReport(
            f_fact=f_global, f_logic=1.0, f_global=f_global, iterations=0, tau_low=0, tau_high=0
        )
    return SequenceOutput(text, 5, report=report)


def test_best_chain_by_consensus_ignores_refused_chains_and_counts_all_tokens() -> None:
    results = [
        _chain("Lyon is the capital.", 0.9),
        _chain("Paris is the capital.", 0.6),
        _chain("The capital is Paris.", 0.55),
        _chain("I cannot answer that reliably.", None),
    ]
    chosen = best_chain(results, n_clusters=3, seed=0, choice="consensus")
    assert chosen.text in ("Paris is the capital.", "The capital is Paris.")
    assert chosen.completion_tokens == 20
    assert chosen.report is not None and chosen.report.chain_scores == [0.9, 0.6, 0.55, None]
    assert best_chain(results, n_clusters=3, seed=0).text == "Lyon is the capital."  # paper
    refused = [_chain("no", None), _chain("nope", None)]
    assert best_chain(refused, 3, 0, "consensus").text == "no"


def test_chains_to_choose_from_narrows_to_supported_ones_when_any() -> None:
    passed = [True, True, False, True]
    assert chains_to_choose_from(passed) == [0, 1, 3]
    assert chains_to_choose_from(passed, [False, True, None, True]) == [1, 3]
    assert chains_to_choose_from(passed, [False, False, None, False]) == [0, 1, 3]
    assert chains_to_choose_from(passed, [False, False, True, False]) == [0, 1, 3]  # failed
    assert chains_to_choose_from([False, False], [None, None]) == []


def test_best_chain_prefers_the_chains_the_verifier_supports() -> None:
    results = [
        _chain("Paris is the capital.", 0.9),
        _chain("The capital is Paris.", 0.8),
        _chain("Lyon is the capital.", 0.5),
        _chain("I cannot answer that reliably.", None),
    ]
    supported: list[bool | None] = [False, False, True, None]
    for choice in ("consensus", "paper"):
        chosen = best_chain(results, 3, 0, choice, supported)  # type: ignore[arg-type]
        assert chosen.text == "Lyon is the capital."
        assert chosen.report is not None and chosen.report.chain_supported == supported
        assert chosen.report.chain_chosen == 2
    unchecked = best_chain(results, 3, 0, "consensus")
    assert unchecked.text in ("Paris is the capital.", "The capital is Paris.")
    assert unchecked.report is not None and unchecked.report.chain_supported == []
    none_supported = best_chain(results, 3, 0, "consensus", [False, False, False, None])
    assert none_supported.text == unchecked.text
