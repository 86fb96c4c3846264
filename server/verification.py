"""Claim checking in the server: verify mode reports and Token-Guard's evidence score E_k."""

from __future__ import annotations

import threading

from guard.config import SegmentEvidence
from guard.report import GuardReport
from server.protocol import ChatMessage
from verify.claims import without_questions
from verify.verifier import Verification, Verifier, VerifierConfig


def conversation_context(messages: list[ChatMessage]) -> str:
    """The reference an answer is checked against: every non-assistant message's text."""
    return "\n".join(m.text() for m in messages if m.role != "assistant")


class ClaimChecker:
    """Verifiers shared by the request handlers and the engine thread, one call at a time each.

    Reports and the answer check use the full verifier (embedding fallback included) in a
    worker thread, against the conversation's statements (its questions assert nothing). E_k
    is computed inside the engine loop, where every millisecond stalls the whole batch, so it
    uses the rule checks only (about 15 ms against about 300 ms per answer on this CPU), against
    the whole conversation: a segment may name what the question asks about without a rollback.
    """

    def __init__(self) -> None:
        self._verifier = Verifier()
        self._rules = Verifier(VerifierConfig(use_embeddings=False))
        self._lock = threading.Lock()
        self._rules_lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the NLP pipeline now rather than on the first request."""
        self.verify("Paris is in France.", "Paris is in France.")

    def verify(self, text: str, context: str) -> Verification:
        """Verdicts on every claim of `text` against the statements of `context`."""
        with self._lock:
            return self._verifier.verify(text, without_questions(context))

    def supported(self, text: str, context: str) -> bool:
        """Whether every claim of `text` is supported by the statements of `context`."""
        return not self.verify(text, context).hallucinated

    def evidence(self, text: str, context: str) -> SegmentEvidence:
        """E_k (the share of the segment's claims the context supports) and the first claim
        the context does not support, for Token-Guard's rollback."""
        with self._rules_lock:
            return SegmentEvidence.of(self._rules.verify(text, context))

    def annotate(self, report: GuardReport | None, text: str, context: str) -> GuardReport:
        """The report (a verify-mode one if there is none) with the answer's claims added."""
        verification = self.verify(text, context)
        base = report or GuardReport(mode="verify")
        return base.model_copy(
            update={"claims": verification.verdicts, "hallucinated": verification.hallucinated}
        )
