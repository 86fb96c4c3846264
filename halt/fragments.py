"""A response split into factual fragments, each judged correct or wrong (pure; HALT §3).

Fragments. The response's content (without a trailing truncation marker) is cut after every
clause or sentence end: one of ``, ; :`` (clause boundary only) or ``. ! ?`` followed by
whitespace, and at line breaks, but never inside a claim's span ("Washington, D.C." stays
whole). A piece without a claim states nothing checkable ("Yes,", "and it was well liked."), so
it joins a neighbour: pieces before the first claim join the first piece with a claim, later
ones the fragment before them. A response without any claim is one fragment (it can still
state the answer, e.g. "Yes."); an empty response has none.

Correctness. A fragment is wrong when

1. the claim verifier finds one of its claims unsupported by the context, or
2. it is the first fragment and the response does not contain the gold answer
   (``groundedqa.metrics.gold_in_answer`` on the whole content): the grounded prompt asks for one
   short sentence that answers the question, so the first fragment is the one that states the
   answer, and a response without the gold answer states a wrong (or no) answer there.

Every other fragment is correct. The rule is deliberately simple: the verifier sees the
context, the gold answer sees the question, and neither needs a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel

from groundedqa.metrics import gold_in_answer
from guard.config import TRUNCATION_MARKER
from halt.config import Boundary
from verify.verifier import ClaimVerdict, Verification

_CUTS: dict[Boundary, re.Pattern[str]] = {
    "sentence": re.compile(r"[.!?](?=\s)|\n"),
    "clause": re.compile(r"[.!?,;:](?=\s)|\n"),
}
_TRAILING_MARKER = re.compile(rf"(?:\.\.\.)?\s*{re.escape(TRUNCATION_MARKER)}\W*$", re.I)


class Fragment(BaseModel):
    """One factual fragment: its span in the content, its claims and the verdict on it."""

    start: int
    end: int
    text: str
    claims: list[str]
    unsupported: list[str]
    correct: bool


class JudgedResponse(BaseModel):
    """A sampled response with its judged fragments; `finished`: it ended with an end token."""

    text: str
    finished: bool
    fragments: list[Fragment]


def stated_content(response: str) -> str:
    """The response without a trailing truncation marker (and the "..." before it), stripped."""
    return _TRAILING_MARKER.sub("", response).strip()


def is_truncated(response: str) -> bool:
    """Whether the response ends with the truncation marker."""
    return _TRAILING_MARKER.search(response) is not None


def split_spans(
    text: str, claim_spans: Sequence[tuple[int, int]], boundary: Boundary = "clause"
) -> list[tuple[int, int]]:
    """Char spans of the fragments of ``text`` (see the module docstring), whitespace trimmed."""
    cuts = [
        m.end()
        for m in _CUTS[boundary].finditer(text)
        if not any(start < m.end() < end for start, end in claim_spans)
    ]
    pieces = []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            pieces.append((start + lead, start + len(piece.rstrip())))
    has_claim = [any(start <= c < end for c, _ in claim_spans) for start, end in pieces]
    if not any(has_claim):
        return [(pieces[0][0], pieces[-1][1])] if pieces else []
    first = has_claim.index(True)
    merged = [(pieces[0][0], pieces[first][1])]  # leading claimless pieces join the first claim
    for (start, end), claimed in zip(pieces[first + 1 :], has_claim[first + 1 :], strict=True):
        if claimed:
            merged.append((start, end))
        else:  # a later claimless piece extends the fragment before it
            merged[-1] = (merged[-1][0], end)
    return merged


def judge_fragments(
    response: str, verification: Verification, gold: str, boundary: Boundary = "clause"
) -> list[Fragment]:
    """The response's fragments, each judged by the rule of the module docstring.

    ``verification`` is the verifier's verdict on ``stated_content(response)``, the text whose
    offsets its claims carry.
    """
    content = stated_content(response)
    verdicts = verification.verdicts
    spans = split_spans(content, [(v.claim.start, v.claim.end) for v in verdicts], boundary)
    answered = gold_in_answer(content, gold)
    fragments = []
    for index, (start, end) in enumerate(spans):
        own: list[ClaimVerdict] = [v for v in verdicts if start <= v.claim.start < end]
        unsupported = [v.claim.text for v in own if not v.supported]
        fragments.append(
            Fragment(
                start=start,
                end=end,
                text=content[start:end],
                claims=[v.claim.text for v in own],
                unsupported=unsupported,
                correct=not unsupported and (answered or index > 0),
            )
        )
    return fragments
