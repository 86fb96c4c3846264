"""Evaluation metrics as pure functions: SQuAD EM/F1, gold-in-answer, Faith., Info., Q-Score,
rates, selective-prediction figures (coverage, abstention precision, risk-coverage, AURC),
percentile-bootstrap confidence intervals over items (single and paired).

Faith., Info. and Q-Score follow BALTO's evaluation (App. E.2): Faith. is the share of responses
without a hallucinated claim, Info. the share with at least as many claims as the reference
model's response to the same item, Q-Score = Faith. x Info. Faith. is judged by the claim
verifier; gold-in-answer is judged by the dataset's gold answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

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


def gold_in_answer(response: str, gold: str) -> bool:
    """True when the normalised gold answer occurs in the normalised response, on word bounds.

    An empty normalised gold answer is never found (it would be in every response).
    """
    expected = normalize_answer(gold)
    return bool(expected) and f" {expected} " in f" {normalize_answer(response)} "


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
    """Share of responses that abstained (gave no answer at all)."""
    return _share(abstained)


def coverage(abstained: Sequence[bool]) -> float:
    """Share of responses that answered (fully or partially): 1 - abstention rate."""
    return 1.0 - _share(abstained)


def abstention_precision(
    abstained: Sequence[bool], reference_wrong: Sequence[bool]
) -> float | None:
    """Share of abstentions where the reference run was wrong on the same item.

    High precision means the abstentions fell on items the reference would have got wrong;
    None when nothing abstained.
    """
    kept = [wrong for a, wrong in zip(abstained, reference_wrong, strict=True) if a]
    return _share(kept) if kept else None


class RiskCoveragePoint(NamedTuple):
    """Keeping the items whose confidence is at least `threshold`: their share and error rate."""

    threshold: float
    coverage: float
    risk: float


def risk_coverage(confidences: Sequence[float], correct: Sequence[bool]) -> list[RiskCoveragePoint]:
    """The risk-coverage curve: one point per distinct confidence, from the most confident.

    At threshold t the items with confidence >= t are kept; coverage is their share of all
    items and risk the share of them that are wrong. Tied confidences enter together.
    """
    if len(confidences) != len(correct):
        raise ValueError("each confidence needs exactly one correctness flag")
    if not confidences:
        raise ValueError("a risk-coverage curve of no items is undefined")
    scores = np.asarray(confidences, dtype=float)
    order = np.argsort(-scores, kind="stable")
    ranked, wrong = scores[order], ~np.asarray(correct, dtype=bool)[order]
    errors = np.cumsum(wrong)
    last_of_tie = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    n = len(ranked)
    return [
        RiskCoveragePoint(float(ranked[i]), (i + 1) / n, float(errors[i]) / (i + 1))
        for i in last_of_tie
    ]


def aurc(curve: Sequence[RiskCoveragePoint]) -> float:
    """Area under the risk-coverage curve, a step integral over coverage from 0 (lower is better).

    Without ties this is the mean of the risks of the top-1, top-2, ... top-n items.
    """
    if not curve:
        raise ValueError("the area under an empty curve is undefined")
    area, previous = 0.0, 0.0
    for point in curve:
        area += point.risk * (point.coverage - previous)
        previous = point.coverage
    return area


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


BOOTSTRAP_RESAMPLES = 2000


class Interval(NamedTuple):
    """A statistic on all items and the bounds of its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float


def mean_difference(values: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(values) - mean(reference) along `axis`."""
    return np.mean(values, axis=axis) - np.mean(reference, axis=axis)


def mean_ratio(values: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(values) / mean(reference) along `axis` (inf or nan where the reference mean is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(values, axis=axis) / np.mean(reference, axis=axis)


def mean_product(values: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(values) x mean(reference) along `axis` (e.g. Q-Score = Faith. x Info.)."""
    return np.mean(values, axis=axis) * np.mean(reference, axis=axis)


def _interval(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    if len(data[0]) < 2:
        raise ValueError("a bootstrap interval needs at least two items")
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        paired=len(data) > 1,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(float(statistic(*data, axis=-1)), float(low), float(high))


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """`statistic` of the items with its percentile-bootstrap interval (items resampled).

    `statistic(x, axis=...)` must reduce along `axis`; the same seed gives the same interval.
    """
    return _interval((np.asarray(values, dtype=float),), statistic, n_resamples, confidence, seed)


def paired_bootstrap_interval(
    values: Sequence[float],
    reference: Sequence[float],
    statistic: Callable[..., np.ndarray] = mean_difference,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """`statistic(values, reference)` with its percentile-bootstrap interval, resampling items
    in pairs: each resample takes the same item indices from both lists (default: the
    difference of their means).
    """
    if len(values) != len(reference):
        raise ValueError("each value needs exactly one reference value")
    data = (np.asarray(values, dtype=float), np.asarray(reference, dtype=float))
    return _interval(data, statistic, n_resamples, confidence, seed)
