"""Representative chain selection by TF-IDF + KMeans."""

from guard.chains import choose_chain, representative_chains

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
