"""Capability-aligned training targets from judged fragments at a tunable threshold (pure).

HALT (arXiv 2506.04051, §3) finetunes a model on its own responses with the parts it cannot
reliably get right removed, or replaced by "Unsure from here". Here, per question:

Estimated correctness. The model answered the question K times (sampled). The reliability
r_j of fragment position j is the share of those responses with at least j fragments whose
j-th fragment is correct (halt.fragments): how reliably the model gets that part of its answer
right. A fragment of one response is *kept* when it is correct, r_j >= ``threshold``, and it is
not the unfinished last fragment of a response that ran out of tokens.

Modes:

- ``cut`` (later fragments build on earlier ones): the target is the response up to its first
  fragment that is not kept, then the truncation marker (``...`` first when the kept text does
  not end a sentence, as the guard writes it); a response whose fragments are all kept stays
  whole; one whose first fragment is not kept becomes the marker alone (full abstention).
- ``drop`` (independent facts): the target is the kept fragments in order, the last one closed
  with a period; none kept: the marker alone.

The threshold trades completeness for correctness: 0 keeps every correct fragment (ground-truth
pruning only); raising it also drops fragments the model gets right only some of the time
(fewer fragments stated, each more reliably correct); 1 keeps only positions that every sample
reaching them got right. Each question yields one target: that of the sample whose target
keeps the most fragments (ties: the earliest sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from guard.config import TRUNCATION_MARKER
from halt.config import Mode
from halt.fragments import JudgedResponse, stated_content

_SENTENCE_ENDS = (".", "!", "?")


@dataclass(frozen=True)
class Target:
    """One question's training target and how it came about."""

    text: str
    sample: int
    kept: int
    stated: int

    @property
    def abstained(self) -> bool:
        """The target states nothing: it is the truncation marker alone."""
        return self.kept == 0

    @property
    def completeness(self) -> float:
        """Share of the chosen response's fragments the target keeps (1.0 for no fragments)."""
        return self.kept / self.stated if self.stated else 1.0


def position_rates(correct: Sequence[Sequence[bool]]) -> list[float]:
    """r_j per fragment position: share of the responses reaching position j that got it right.

    ``correct[k][j]``: whether fragment j of response k is correct.
    """
    width = max((len(flags) for flags in correct), default=0)
    rates = []
    for j in range(width):
        reaching = [flags[j] for flags in correct if len(flags) > j]
        rates.append(sum(reaching) / len(reaching))
    return rates


def keep_flags(
    correct: Sequence[bool],
    rates: Sequence[float],
    threshold: float,
    mode: Mode,
    finished: bool = True,
) -> list[bool]:
    """Which fragments of one response the target keeps (see the module docstring)."""
    keep = [ok and rate >= threshold for ok, rate in zip(correct, rates, strict=False)]
    if not finished and keep:
        keep[-1] = False
    if mode == "cut":
        first_dropped = keep.index(False) if False in keep else len(keep)
        keep = [j < first_dropped for j in range(len(keep))]
    return keep


def _unpunctuated(text: str) -> str:
    return text.rstrip().rstrip(",;:").rstrip()


def target_text(response: JudgedResponse, keep: Sequence[bool], mode: Mode) -> str:
    """The target of one response given its kept fragments."""
    fragments = response.fragments
    if not any(keep):
        return TRUNCATION_MARKER
    if mode == "drop":
        text = _unpunctuated(" ".join(f.text for f, k in zip(fragments, keep, strict=True) if k))
        return text if text.endswith(_SENTENCE_ENDS) else text + "."
    if all(keep):
        return stated_content(response.text)
    kept = _unpunctuated(stated_content(response.text)[: fragments[sum(keep) - 1].end])
    joint = " " if kept.endswith(_SENTENCE_ENDS) else "... "
    return kept + joint + TRUNCATION_MARKER


def choose_target(samples: Sequence[JudgedResponse], threshold: float, mode: Mode) -> Target:
    """The question's target from its K judged responses (see the module docstring)."""
    if not samples:
        raise ValueError("a target needs at least one sampled response")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside [0, 1]")
    correct = [[f.correct for f in s.fragments] for s in samples]
    rates = position_rates(correct)
    targets = []
    for index, sample in enumerate(samples):
        keep = keep_flags(correct[index], rates, threshold, mode, sample.finished)
        targets.append(Target(target_text(sample, keep, mode), index, sum(keep), len(keep)))
    return max(targets, key=lambda t: t.kept)  # the first of equals: the earliest sample
