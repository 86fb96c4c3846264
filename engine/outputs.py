"""The one output record of a generation, shared by the engine, the guard and the server."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

FinishReason = Literal["stop", "length"]

ReportT = TypeVar("ReportT")


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's text and log-probability, with the most likely alternatives.

    `top` holds (text, logprob) of the most likely tokens at that position, best first.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class SequenceOutput(Generic[ReportT]):
    """Text produced since the last output; `completion_tokens` counts every token so far.

    `report` is whatever a sequence type attaches to its final output (the guard's report);
    plain sequences leave it None. `logprobs` covers the tokens since the last output when the
    request asked for them, else it is None.
    """

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    report: ReportT | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None

    def followed_by(self, later: SequenceOutput[ReportT]) -> SequenceOutput[ReportT]:
        """This output and a later one of the same generation, as one."""
        logprobs = later.logprobs
        if self.logprobs is not None:
            logprobs = self.logprobs + (later.logprobs or ())
        return replace(later, text=self.text + later.text, logprobs=logprobs)
