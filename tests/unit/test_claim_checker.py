"""The server's claim checker: reports and the answer check read the conversation's statements."""

from server.verification import ClaimChecker
from verify.claims import without_questions

CONVERSATION = (
    "Answer from the context.\n"
    "Context: Acme is a bakery chain founded in 1999 in Springfield.\n\n"
    "Question: Did Jane Park found Acme in 2004?"
)


def test_without_questions_keeps_statements_only() -> None:
    statements = without_questions(CONVERSATION)
    assert "1999" in statements and "Springfield" in statements
    assert "Jane Park" not in statements and "2004" not in statements
    assert without_questions("Who? Why?") == ""


def test_a_claim_only_the_question_makes_is_unsupported() -> None:
    checker = ClaimChecker()
    assert checker.supported("Acme was founded in 1999 in Springfield.", CONVERSATION)
    assert not checker.supported("Acme was founded in 2004.", CONVERSATION)
    # E_k, which steers decoding, still reads the whole conversation, the question included.
    assert checker.evidence("Acme was founded in 2004.", CONVERSATION).share == 1.0
    report = checker.annotate(None, "Jane Park founded Acme in 2004.", CONVERSATION)
    assert report.hallucinated
