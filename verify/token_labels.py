"""Projection of claim verdicts onto tokens: -1 hallucinated, +1 faithful, 0 neutral (BALTO §2)."""

from __future__ import annotations

from verify.verifier import Verification

HALLUCINATED = -1
FAITHFUL = 1
NEUTRAL = 0


def _overlaps(token: tuple[int, int], span: tuple[int, int]) -> bool:
    return token[0] < span[1] and span[0] < token[1]


def token_labels(verification: Verification, offsets: list[tuple[int, int]]) -> list[int]:
    """Label each token by its char span (a tokenizer's offset_mapping into the response).

    A token is hallucinated if it overlaps the wrong span of an unsupported claim, faithful if
    it overlaps a supported claim, neutral otherwise; hallucinated wins where both apply.
    Empty spans (special tokens report (0, 0)) are neutral.
    """
    wrong = [v.wrong_span for v in verification.verdicts if v.wrong_span is not None]
    faithful = [(v.claim.start, v.claim.end) for v in verification.verdicts if v.supported]
    labels = []
    for token in offsets:
        if token[0] >= token[1]:
            labels.append(NEUTRAL)
        elif any(_overlaps(token, span) for span in wrong):
            labels.append(HALLUCINATED)
        elif any(_overlaps(token, span) for span in faithful):
            labels.append(FAITHFUL)
        else:
            labels.append(NEUTRAL)
    return labels
