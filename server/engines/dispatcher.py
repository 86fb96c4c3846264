"""Least-loaded dispatch over several engines of one kind (one torch runner per GPU)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams
from guard.config import GuardRun
from guard.report import GuardReport
from server.engines.base import GuardEngine


class LeastLoadedDispatcher:
    """Sends each request to the engine with the fewest running plus waiting requests."""

    def __init__(self, engines: Sequence[GuardEngine]) -> None:
        if not engines:
            raise ValueError("a dispatcher needs at least one engine")
        self.engines = list(engines)
        self.name = engines[0].name

    def pending(self) -> tuple[int, int]:
        """Summed (running, waiting) over all engines."""
        loads = [engine.pending() for engine in self.engines]
        return sum(r for r, _ in loads), sum(w for _, w in loads)

    def pick(self) -> GuardEngine:
        """The least-loaded engine (the first of equals)."""
        return min(self.engines, key=lambda engine: sum(engine.pending()))

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[SequenceOutput[None]]:
        """Run a plain request on the least-loaded engine."""
        return self.pick().generate(request_id, prompt_ids, params)

    def generate_guarded(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, run: GuardRun
    ) -> AsyncIterator[SequenceOutput[GuardReport]]:
        """Run a guarded request on the least-loaded engine."""
        return self.pick().generate_guarded(request_id, prompt_ids, params, run)

    async def shutdown(self) -> None:
        """Shut every engine down."""
        for engine in self.engines:
            await engine.shutdown()
