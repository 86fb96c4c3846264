"""Claim extraction: spans, kinds, canonical forms and the no-overlap rule."""

import itertools
from decimal import Decimal

import pytest

from verify.claims import (
    extract_claims,
    normalize_entity,
    numbers_in,
    parse_dates,
    parse_number,
    split_sentences,
)

CONTEXT = "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO."


def _by_text(text: str) -> dict:
    return {c.text: c for c in extract_claims(text)}


def test_context_claims_have_kinds_spans_and_sentences() -> None:
    claims = _by_text(CONTEXT)
    money, year, person = claims["$12.4 billion"], claims["2024"], claims["Jane Park"]
    assert (money.kind, money.normalized, money.unit) == ("money", "12400000000 USD", "USD")
    assert money.value == pytest.approx(12.4e9)
    assert money.step == pytest.approx(1e8)  # one decimal of a billion
    assert (year.kind, year.normalized) == ("date", "2024")
    assert (person.kind, person.label) == ("entity", "PERSON")
    for claim in claims.values():
        assert CONTEXT[claim.start : claim.end] == claim.text
    first_end = CONTEXT.index(" Jane")
    assert money.sentence[0] == 0
    assert money.sentence[1] in (first_end, first_end + 1)
    assert person.sentence == (CONTEXT.index("Jane"), len(CONTEXT))


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("$12.4 billion", "12400000000 USD"),
        ("12.4B USD", "12400000000 USD"),
        ("12,400 million dollars", "12400000000 USD"),
        ("€4.6m", "4600000 EUR"),
    ],
)
def test_money_normalises_to_one_canonical_form(text: str, normalized: str) -> None:
    claims = extract_claims(f"Revenue was {text} last year.")
    money = [c for c in claims if c.kind == "money"]
    assert [(c.text, c.normalized) for c in money] == [(text, normalized)]


@pytest.mark.parametrize("text", ["11.4 %", "11.4%", "11.4 percent"])
def test_percentages_normalise(text: str) -> None:
    claims = [c for c in extract_claims(f"Sales fell {text} in March.") if c.kind == "percent"]
    assert [(c.text, c.normalized) for c in claims] == [(text, "11.4%")]


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("March 2, 1991", "1991-03-02"),
        ("25 January 1915", "1915-01-25"),
        ("June 1935", "1935-06"),
        ("2001-09-11", "2001-09-11"),
    ],
)
def test_dates_become_iso(text: str, iso: str) -> None:
    dates = [c for c in extract_claims(f"It happened on {text}, they say.") if c.kind == "date"]
    assert [(c.text, c.normalized) for c in dates] == [(text, iso)]


def test_parse_dates_keeps_unknown_parts_empty() -> None:
    assert parse_dates("born 4 April 1980") == [(1980, 4, 4)]
    assert parse_dates("in Sept 2001") == [(2001, 9, None)]
    assert parse_dates("no date here") == []


def test_numbers_in_words_and_digits() -> None:
    assert parse_number("twenty-five") == (Decimal(25), Decimal(1))
    assert parse_number("12.38") == (Decimal("12.38"), Decimal("0.01"))
    assert parse_number("3 hundred thousand") == (Decimal(3), Decimal(1))  # digits win
    assert parse_number("three hundred thousand") == (Decimal(300000), Decimal(1))
    assert sorted(numbers_in("two cats and 1,500 dogs")) == [Decimal(2), Decimal(1500)]


def test_claims_are_sorted_and_never_overlap() -> None:
    text = (
        "On March 2, 1991 Acme Corp paid $5 million (12.4B USD in total), up 11.4 % from "
        "two years before, says Jane Park of the U.S. office, the 32nd in 1844–1846."
    )
    claims = extract_claims(text)
    assert claims, "expected claims"
    for left, right in itertools.pairwise(claims):
        assert left.end <= right.start
    for claim in claims:
        assert text[claim.start : claim.end] == claim.text
    found = {c.text: (c.kind, c.normalized) for c in claims}
    assert found["March 2, 1991"] == ("date", "1991-03-02")
    assert found["$5 million"] == ("money", "5000000 USD")
    assert found["12.4B USD"] == ("money", "12400000000 USD")
    assert found["11.4 %"] == ("percent", "11.4%")
    assert found["32nd"] == ("ordinal", "#32")
    assert found["1844–1846"] == ("date", "1844/1846")


def test_entity_normalisation() -> None:
    assert normalize_entity("The U.S.") == "us"
    assert normalize_entity("Arthur's Magazine") == "arthur magazine"
    assert normalize_entity("Vicente Fernández") == "vicente fernandez"


def test_glued_sentences_are_split() -> None:
    text = "It was published in the 19th century.First for Women is a magazine."
    spans = split_sentences(text)
    assert len(spans) == 2
    assert text[spans[1][0] :].startswith("First for Women")


def test_no_claims_in_a_plain_answer() -> None:
    assert extract_claims("I am not sure about that.") == []
    assert extract_claims("") == []


@pytest.mark.parametrize(
    "text",
    [
        "1. Set a specific goal for each study session.",
        "Here are three tips: 1. Take short breaks.\n2) Put the phone away.",
    ],
)
def test_list_item_numbers_are_not_claims(text: str) -> None:
    assert not [c for c in extract_claims(text) if c.text in ("1", "2", "1.", "2)")]


def test_a_sentence_ending_in_a_number_keeps_its_claim() -> None:
    claims = extract_claims("Revenue rose in 2024. Costs fell by 12. Then it grew.")
    assert {c.text for c in claims} >= {"2024", "12"}
