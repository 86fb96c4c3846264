"""Async front of the torch engine: a worker thread runs `LLMEngine.step()` in a loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.outputs import SequenceOutput
from engine.sampling import SamplingParams
from engine.sequence import Sequence
from guard.chains import best_chain, chain_score
from guard.config import GuardRun
from guard.guarded_sequence import GuardedSequence
from guard.probe import HallucinationProbe
from guard.report import GuardReport
from server import metrics
from server.engines.base import EngineError
from server.threads import limit_threads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Submit:
    seq: Sequence
    sink: asyncio.Queue[SequenceOutput[Any] | EngineError]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True)
class _Abort:
    request_id: str


class TorchEngine:
    """Continuous batching over one `ModelRunner`; serves plain and guarded sequences."""

    name = "torch"

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: PreTrainedTokenizerBase,
        label: str | None = None,
        probe: HallucinationProbe | None = None,
        max_prefill_tokens: int = 2048,
        prefix_cache_bytes: int = 0,
        threads: int | None = None,
    ) -> None:
        """`threads`: intra-op threads of the worker thread's torch ops (None: torch's default,
        the CPU count)."""
        self.runner = runner
        self.threads = threads
        self.tokenizer = tokenizer
        self.eos_token_ids = runner.eos_token_ids(tokenizer)
        self.core = LLMEngine(runner, max_prefill_tokens, prefix_cache_bytes)
        self.label = label or f"torch-{runner.device}"
        self.probe = probe
        self._active = 0
        self._inbox: queue.SimpleQueue[_Submit | _Abort | None] = queue.SimpleQueue()
        self._sinks: dict[str, _Submit] = {}
        self._thread = threading.Thread(target=self._loop, name="torch-engine", daemon=True)
        self._thread.start()

    def pending(self) -> tuple[int, int]:
        """Requests (running, waiting) right now; submitted ones not yet scheduled are waiting."""
        running = min(len(self.core.scheduler.running), self._active)
        return running, self._active - running

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[SequenceOutput[None]]:
        """Stream a plain sequence's output; leaving early aborts it and frees its slot."""
        seq = Sequence(
            request_id,
            prompt_ids,
            params,
            self.tokenizer,
            self.eos_token_ids,
            self.runner.max_model_len,
        )
        async for output in self._run(seq):
            yield output

    async def generate_guarded(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, run: GuardRun
    ) -> AsyncIterator[SequenceOutput[GuardReport]]:
        """Stream a guarded sequence's output (with several chains: the chosen chain's, as one
        chunk); leaving early aborts it and frees its slot."""
        if run.config.chains > 1:
            yield await self._chains(request_id, prompt_ids, params, run)
            return
        async for output in self._run(self._guarded(request_id, prompt_ids, params, run)):
            yield output

    async def _chains(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, run: GuardRun
    ) -> SequenceOutput[GuardReport]:
        """Decode `chains` chains side by side (held to the end); the guard picks the answer,
        after the claim verifier has checked the passing ones (in a worker thread, off the
        engine loop) when the request prefers supported answers."""
        config = run.config
        seed = params.seed if params.seed is not None else random.randrange(2**31)
        runs = [
            self._collect(
                self._guarded(
                    f"{request_id}/chain{c}",
                    prompt_ids,
                    replace(params, seed=seed + c),
                    replace(run, stream=False, explore=c > 0),
                )
            )
            for c in range(config.chains)
        ]
        results = list(await asyncio.gather(*runs))
        if run.answer_check is None or not config.prefer_supported:
            return best_chain(results, config.clusters, seed, config.chain_choice)
        check = run.answer_check
        start = time.perf_counter()
        supported = await asyncio.to_thread(
            lambda: [check(r.text) if chain_score(r) is not None else None for r in results]
        )
        checked_s = time.perf_counter() - start
        chosen = best_chain(results, config.clusters, seed, config.chain_choice, supported)
        if chosen.report is None:
            return chosen
        timings = chosen.report.timings.model_copy(update={"check_s": checked_s})
        return replace(chosen, report=chosen.report.model_copy(update={"timings": timings}))

    async def _collect(self, seq: GuardedSequence) -> SequenceOutput[GuardReport]:
        """Run a sequence to its end; its whole output as one (aborted if cancelled)."""
        whole: SequenceOutput[GuardReport] = SequenceOutput("", 0)
        async with aclosing(self._run(seq)) as stream:
            async for output in stream:
                whole = whole.followed_by(output)
        return whole

    async def _run(self, seq: Sequence) -> AsyncIterator[SequenceOutput[Any]]:
        """Submit a sequence to the worker and relay its outputs; leaving early aborts it."""
        request_id = seq.request_id
        sink: asyncio.Queue[SequenceOutput[Any] | EngineError] = asyncio.Queue()
        self._inbox.put(_Submit(seq, sink, asyncio.get_running_loop()))
        self._active += 1
        finished = False
        try:
            while not finished:
                item = await sink.get()
                if isinstance(item, EngineError):
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            self._active -= 1
            if not finished:
                self._inbox.put(_Abort(request_id))

    async def shutdown(self) -> None:
        """Stop the worker thread."""
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join, 10)

    def _guarded(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, run: GuardRun
    ) -> GuardedSequence:
        """A guarded sequence under `run`, scoring with this runner's embeddings and probe."""
        return GuardedSequence(
            request_id,
            prompt_ids,
            params,
            self.tokenizer,
            self.eos_token_ids,
            self.runner.max_model_len,
            run,
            self.runner.embed,
            risk=None if self.probe is None else self.probe.risk,
        )

    def _loop(self) -> None:
        if self.threads is not None:
            limit_threads(self.threads)
        while True:
            block = not self.core.has_work()
            try:
                while True:
                    message = self._inbox.get(block=block)
                    block = False
                    if message is None:
                        return
                    self._handle(message)
            except queue.Empty:
                pass
            if self.core.has_work():
                self._step()

    def _handle(self, message: _Submit | _Abort) -> None:
        if isinstance(message, _Abort):
            self._sinks.pop(message.request_id, None)
            self.core.abort(message.request_id)
            self._publish_load()
            return
        self._sinks[message.seq.request_id] = message
        self.core.add(message.seq)

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            result = self.core.step()
        except Exception:  # the loop must survive anything a step throws
            logger.exception("engine step failed")
            return
        metrics.STEP_SECONDS.labels(self.label).observe(time.perf_counter() - start)
        if result.batch_size:
            metrics.BATCH_SIZE.labels(self.label).observe(result.batch_size)
        metrics.PROMPT_TOKENS_PREFILLED.labels(self.label).inc(result.prefilled)
        metrics.PROMPT_TOKENS_REUSED.labels(self.label, "running").inc(result.shared)
        metrics.PROMPT_TOKENS_REUSED.labels(self.label, "cache").inc(result.cached)
        metrics.PREFIX_CACHE_BYTES.labels(self.label).set(self.core.prefix_cache.nbytes)
        self._publish_load()
        for request_id, output in result.outputs.items():
            self._deliver(request_id, output, done=output.finish_reason is not None)
        for request_id, message in result.failed.items():
            self._deliver(request_id, EngineError(message), done=True)

    def _publish_load(self) -> None:
        """Set the load gauges; after aborts too, which free slots without a step."""
        scheduler = self.core.scheduler
        metrics.REQUESTS_RUNNING.labels(self.label).set(len(scheduler.running))
        metrics.REQUESTS_WAITING.labels(self.label).set(len(scheduler.waiting))
        metrics.GUARD_BUFFER_BYTES.labels(self.label).set(
            sum(seq.buffer_bytes() for seq in scheduler.running)
        )

    def _deliver(
        self, request_id: str, item: SequenceOutput[Any] | EngineError, done: bool
    ) -> None:
        submit = self._sinks.pop(request_id, None) if done else self._sinks.get(request_id)
        if submit is not None:
            submit.loop.call_soon_threadsafe(submit.sink.put_nowait, item)
