"""The async interfaces engines offer the serving layer: plain generation, and guarded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams
from guard.config import GuardRun
from guard.report import GuardReport


class EngineError(RuntimeError):
    """The engine failed this request (and only this one)."""


class EngineInputError(EngineError):
    """The engine refused this request's input (e.g. a JSON schema it cannot compile)."""


class Engine(Protocol):
    """An engine that streams plain generations for token-id prompts."""

    name: str

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[SequenceOutput[None]]:
        """Stream chunks until the generation finishes; closing the iterator aborts it."""
        ...

    def pending(self) -> tuple[int, int]:
        """Requests (running, waiting) right now."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and release its resources."""
        ...


class GuardEngine(Engine, Protocol):
    """An engine that also runs Token-Guard generations (the torch engine)."""

    def generate_guarded(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, run: GuardRun
    ) -> AsyncIterator[SequenceOutput[GuardReport]]:
        """Stream a guarded generation under `run`'s settings; the final chunk has the report."""
        ...
