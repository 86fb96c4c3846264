"""The async interface every engine offers the serving layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from guard.config import GuardConfig
from guard.report import GuardReport
from guard.sampling import SamplingParams


@dataclass(frozen=True)
class GuardRun:
    """What a guarded generation needs beyond sampling.

    `stream`: the client reads text as it comes, so accepted segments are released at once
    instead of after the global check. `evidence`: E_k of a segment's text (Eq. 14), from the
    claim verifier against the conversation; None means E_k = 1.
    """

    config: GuardConfig
    stream: bool = False
    evidence: Callable[[str], float] | None = None


@dataclass(frozen=True)
class GenerationChunk:
    """New text of one generation; `completion_tokens` counts all tokens so far."""

    text: str
    completion_tokens: int
    finish_reason: Literal["stop", "length"] | None = None
    report: GuardReport | None = None


class EngineError(RuntimeError):
    """The engine failed this request (and only this one)."""


class Engine(Protocol):
    """An engine that streams generations for token-id prompts."""

    name: str

    def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        guard: GuardRun | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream chunks until the generation finishes; closing the iterator aborts it."""
        ...

    def pending(self) -> tuple[int, int]:
        """Requests (running, waiting) right now."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and release its resources."""
        ...
