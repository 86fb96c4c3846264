"""Chains side by side, one answer chosen: the paper's way (representatives by TF-IDF + KMeans,
the best by F_global; seed 004) or by consensus (the answer the other chains agree with most),
among the chains that passed (and that the claim verifier supports, when asked and any is)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import pairwise_distances_argmin
from sklearn.metrics.pairwise import cosine_similarity

from engine.outputs import SequenceOutput
from guard.config import ChainChoice
from guard.report import GuardReport


def representative_chains(texts: list[str], n_clusters: int, seed: int = 0) -> list[int]:
    """Sorted indices of the texts nearest each KMeans centroid over their TF-IDF vectors.

    With no more texts than clusters every index is returned. The cluster count is capped at
    the number of distinct TF-IDF rows, so duplicates never leave a cluster empty; texts with
    no usable words at all form a single cluster represented by text 0.
    """
    if len(texts) <= n_clusters:
        return list(range(len(texts)))
    try:
        vectors = TfidfVectorizer().fit_transform(texts)
    except ValueError:  # empty vocabulary: every text is empty or has no word tokens
        return [0]
    distinct = len(np.unique(vectors.toarray(), axis=0))
    kmeans = KMeans(n_clusters=min(n_clusters, distinct), n_init=10, random_state=seed)
    kmeans.fit(vectors)
    return sorted({int(i) for i in pairwise_distances_argmin(kmeans.cluster_centers_, vectors)})


def choose_chain(
    texts: list[str], scores: list[float | None], n_clusters: int, seed: int = 0
) -> int:
    """Index of the best-scoring representative chain; chains that failed score None.

    Representatives come from `representative_chains` over the chains that passed; when none
    passed, chain 0 (a failure like the others) is returned.
    """
    passed = [i for i, score in enumerate(scores) if score is not None]
    if not passed:
        return 0
    representatives = representative_chains([texts[i] for i in passed], n_clusters, seed)
    return max((passed[i] for i in representatives), key=lambda i: scores[i] or 0.0)


def consensus_chain(texts: list[str]) -> int:
    """Index of the text most like the others on average, by cosine of TF-IDF vectors fitted on
    these texts (self-consistency: an answer that sampled chains keep reproducing is more often
    right); ties go to the earlier text (chain 0 is the greedy one). 0 for fewer than two.
    """
    if len(texts) < 2:
        return 0
    try:
        similarities = cosine_similarity(TfidfVectorizer().fit_transform(texts))
    except ValueError:  # empty vocabulary: no text has a word token, all alike
        return 0
    agreement = (similarities.sum(axis=1) - np.diag(similarities)) / (len(texts) - 1)
    return int(np.argmax(agreement))


def chain_score(result: SequenceOutput[GuardReport]) -> float | None:
    """F_global of a chain that passed (answered, with a global check); None for one that
    failed."""
    report = result.report
    if report is None or report.outcome != "answered" or report.global_check is None:
        return None
    return report.global_check.f_global


def chains_to_choose_from(
    passed: Sequence[bool], supported: Sequence[bool | None] | None = None
) -> list[int]:
    """Indices of the chains an answer is chosen from: those that passed, narrowed to those
    whose answer the claim verifier found supported when there is any such chain."""
    indices = [i for i, ok in enumerate(passed) if ok]
    if supported is None:
        return indices
    return [i for i in indices if supported[i]] or indices


def pick_chain(
    texts: list[str],
    scores: list[float | None],
    choice: ChainChoice,
    n_clusters: int,
    seed: int = 0,
    supported: Sequence[bool | None] | None = None,
) -> int | None:
    """Index of the answering chain among those `chains_to_choose_from` (a score of None: the
    chain failed); None when no chain passed. `choice` "paper": the best-scoring KMeans
    representative; "consensus": the chain the others chosen from agree with most."""
    eligible = chains_to_choose_from([score is not None for score in scores], supported)
    if not eligible:
        return None
    if choice == "consensus":
        return eligible[consensus_chain([texts[i] for i in eligible])]
    kept = [score if i in eligible else None for i, score in enumerate(scores)]
    return choose_chain(texts, kept, n_clusters, seed)


def best_chain(
    results: list[SequenceOutput[GuardReport]],
    n_clusters: int,
    seed: int,
    choice: ChainChoice = "paper",
    supported: list[bool | None] | None = None,
) -> SequenceOutput[GuardReport]:
    """The answer from chains decoded side by side (`pick_chain` over their F_global, chain 0
    when none passed), with every chain's score in its report; it counts every chain's tokens.
    """
    scores = [chain_score(r) for r in results]
    index = pick_chain([r.text for r in results], scores, choice, n_clusters, seed, supported)
    index = 0 if index is None else index
    chosen = results[index]
    report = None
    if chosen.report is not None:
        report = chosen.report.model_copy(
            update={
                "chains": len(results),
                "chain_scores": scores,
                "chain_chosen": index,
                "chain_supported": list(supported or []),
            }
        )
    tokens = sum(r.completion_tokens for r in results)
    return replace(chosen, completion_tokens=tokens, report=report)
