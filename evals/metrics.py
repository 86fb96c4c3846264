"""Evaluation metrics as pure functions: SQuAD EM/F1, Faith., Info., Q-Score, rates, percentiles.

Faith., Info. and Q-Score follow BALTO's evaluation (App. E.2): Faith. is the share of responses
without a hallucinated claim, Info. the share with at least as many claims as the reference
model's response to the same item, Q-Score = Faith. x Info.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _share(flags: Sequence[bool]) -> float:
    if not flags:
        raise ValueError("a share of an empty list is undefined")
    return sum(flags) / len(flags)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 of the normalised strings (bag of words, as in the SQuAD script)."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def faithfulness(hallucinated: Sequence[bool]) -> float:
    """Faith.: share of responses with no hallucinated claim."""
    return 1.0 - _share(hallucinated)


def informativeness(n_claims: Sequence[int], reference_n_claims: Sequence[int]) -> float:
    """Info.: share of responses with at least as many claims as the reference response."""
    if len(n_claims) != len(reference_n_claims):
        raise ValueError("each response needs exactly one reference response")
    return _share([n >= ref for n, ref in zip(n_claims, reference_n_claims, strict=True)])


def q_score(faith: float, info: float) -> float:
    """Q-Score = Faith. x Info."""
    return faith * info


def abstention_rate(abstained: Sequence[bool]) -> float:
    """Share of responses that abstained (refused or truncated)."""
    return _share(abstained)


def hallucination_rate(hallucinated: Sequence[bool], abstained: Sequence[bool]) -> float | None:
    """Share of hallucinated responses among those that did not abstain; None if all did."""
    answered = [h for h, a in zip(hallucinated, abstained, strict=True) if not a]
    return _share(answered) if answered else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        raise ValueError("a percentile of an empty list is undefined")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean."""
    if not values:
        raise ValueError("a mean of an empty list is undefined")
    return float(np.mean(np.asarray(values, dtype=float)))


def tokens_per_second(completion_tokens: int, wall_s: float) -> float:
    """Throughput: completion tokens over the wall time of the whole run."""
    if wall_s <= 0:
        raise ValueError("wall time must be positive")
    return completion_tokens / wall_s
