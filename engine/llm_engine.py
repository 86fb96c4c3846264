"""The torch engine's step loop: prompt chunks into the cache, then one batched tree step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from engine.model_runner import ModelRunner
from engine.outputs import SequenceOutput
from engine.prefix_cache import PrefixCache
from engine.sampling import Shortlist, sample_batch, shortlists
from engine.scheduler import PrefillChunk, Scheduler
from engine.sequence import EVALUATE_MORE, Sequence

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StepResult:
    """Outputs of one engine step, per request id, the size of the batched forward, and the
    prompt tokens this step put into slots: by a forward (`prefilled`), copied from a running
    slot with the same prompt (`shared`), or from the prefix cache (`cached`)."""

    outputs: dict[str, SequenceOutput[Any]]
    failed: dict[str, str]
    batch_size: int
    prefilled: int = 0
    shared: int = 0
    cached: int = 0


class LLMEngine:
    """Ties scheduler and runner together; a sequence decides its own tokens."""

    def __init__(
        self, runner: ModelRunner, max_prefill_tokens: int = 2048, prefix_cache_bytes: int = 0
    ) -> None:
        """`max_prefill_tokens`: prompt tokens put into the cache per step (chunked prefill);
        `prefix_cache_bytes`: memory for prompts kept after their sequences end (0: none)."""
        self.runner = runner
        self.scheduler = Scheduler(runner.num_slots, max_prefill_tokens)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self._by_id: dict[str, Sequence] = {}
        # Penultimate states of the prompt tokens in a prefilling sequence's slot so far.
        self._prompt_states: dict[str, list[torch.Tensor]] = {}
        # Next-token logits and mean state after each prompt some running slot holds.
        self._after_prompt: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; it joins the running batch at the next step with a free slot."""
        self._by_id[seq.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Drop a sequence and free its slot now (client went away)."""
        seq = self._by_id.pop(request_id, None)
        if seq is not None:
            self._release(seq)

    def has_work(self) -> bool:
        """Whether any sequence is waiting or running."""
        return self.scheduler.has_work()

    def step(self) -> StepResult:
        """Put this step's prompt chunks in the cache, then advance every decoding sequence."""
        failed: dict[str, str] = {}
        cached = self._reuse_cached(self.scheduler.admit())
        chunks = self.scheduler.prefill_chunks()
        self._prefill(chunks, failed)
        shared = self._share_prompts(failed)
        decoding = self.scheduler.decoding()
        self._draw(decoding, failed)
        batch: list[Sequence] = []
        candidates: list[list[int]] = []
        for seq in decoding:
            if seq.request_id in failed:
                continue
            proposal = self._guarded(seq, failed, seq.propose)
            if proposal is not None:
                batch.append(seq)
                candidates.append(proposal)
        if batch:
            self._tree_step(batch, candidates, failed)
        outputs: dict[str, SequenceOutput[Any]] = {}
        for seq in decoding:
            if seq.request_id in failed:
                continue
            output = seq.take_output()
            if output is not None:
                outputs[seq.request_id] = output
            if seq.finished:
                self._release(seq)
        prefilled = sum(c.end - c.start for c in chunks if c.seq.request_id not in failed)
        return StepResult(outputs, failed, len(batch), prefilled, shared, cached)

    def _draw(self, running: list[Sequence], failed: dict[str, str]) -> None:
        """Sample the next token of every plain sequence in one batched call."""
        seqs = [s for s in running if s.draws_in_batch and s.request_id not in failed]
        if not seqs:
            return
        try:
            tokens = sample_batch(
                torch.stack([s.next_logits for s in seqs]),
                [s.params for s in seqs],
                [s.generator for s in seqs],
            )
        except Exception as exc:
            logger.exception("sampling failed")
            for seq in seqs:
                self._fail(seq, failed, exc)
            return
        for seq, token in zip(seqs, tokens, strict=True):
            seq.take_draw(token)

    def _reuse_cached(self, admitted: list[Sequence]) -> int:
        """Start new sequences' slots with the longest prefix the prefix cache holds of their
        prompt; the prompt tokens so reused."""
        reused = 0
        for seq in admitted:
            if not self.scheduler.prefills_from_start(seq):
                continue
            hit = self.prefix_cache.longest_prefix(seq.prompt_ids)
            if hit is None:
                continue
            prompt, length = hit
            self.runner.load_prompt(seq.slot, prompt, length)
            self.scheduler.skip_prefill(seq, length)
            self._prompt_states[seq.request_id] = [prompt.states[:length]]
            reused += length
        return reused

    def _prefill(self, chunks: list[PrefillChunk], failed: dict[str, str]) -> None:
        """Extend each chunk's slot; sequences whose prompt is complete get `on_prefill`.

        The prompt state handed over is the mean penultimate state over the whole prompt.
        A completed prompt is offered to the prefix cache.
        """
        if not chunks:
            return
        try:
            out = self.runner.extend(
                [c.seq.slot for c in chunks], [c.seq.prompt_ids[c.start : c.end] for c in chunks]
            )
        except Exception as exc:  # one bad batch fails its own requests only
            logger.exception("prefill failed")
            for chunk in chunks:
                self._fail(chunk.seq, failed, exc)
            return
        for row, chunk in enumerate(chunks):
            seq = chunk.seq
            self.scheduler.advance_prefill(chunk)
            parts = self._prompt_states.setdefault(seq.request_id, [])
            parts.append(out.states[row])
            if not chunk.last:
                continue
            states = torch.cat(self._prompt_states.pop(seq.request_id))
            mean = states.mean(0)
            if self.prefix_cache.wants(seq.prompt_ids):
                self.prefix_cache.add(self.runner.save_prompt(seq.slot, seq.prompt_ids, states))
            self._after_prompt[tuple(seq.prompt_ids)] = (out.logits[row].clone(), mean)
            self._guarded(seq, failed, seq.on_prefill, out.logits[row], mean)

    def _share_prompts(self, failed: dict[str, str]) -> int:
        """Copy each ready source's prompt K/V into its followers' slots; the tokens copied."""
        copied = 0
        for source, followers in self.scheduler.shares_ready().items():
            length = len(source.prompt_ids)
            try:
                self.runner.share_prefix(source.slot, [f.slot for f in followers], length)
            except Exception as exc:
                logger.exception("prompt copy failed")
                for follower in followers:
                    self._fail(follower, failed, exc)
                continue
            logits, mean = self._after_prompt[tuple(source.prompt_ids)]
            for follower in followers:
                self.scheduler.shared(follower)
                copied += length
                self._guarded(follower, failed, follower.on_prefill, logits.clone(), mean.clone())
        return copied

    def _tree_step(
        self, batch: list[Sequence], candidates: list[list[int]], failed: dict[str, str]
    ) -> None:
        slots = [s.slot for s in batch]
        try:
            out = self.runner.tree_step(slots, candidates)
        except Exception as exc:
            logger.exception("tree step failed")
            for seq in batch:
                self._fail(seq, failed, exc)
            return
        rows: list[int] = []
        picks: list[int] = []
        for row, seq in enumerate(batch):
            m = len(candidates[row])
            probe = None if out.probe is None else out.probe[row, :m]
            chosen = self._guarded(seq, failed, seq.choose, out.hidden[row, :m], probe)
            if chosen is not None and chosen != EVALUATE_MORE:
                rows.append(row)
                picks.append(chosen)
        if not rows:
            return
        kept = [batch[row] for row in rows]
        self.runner.commit([s.slot for s in kept], picks)
        logits = self.runner.logits(out.final[rows, picks])
        try:
            wanted = self._shortlists(kept, logits)
        except Exception as exc:
            logger.exception("shortlists failed")
            for seq in kept:
                self._fail(seq, failed, exc)
            return
        for seq, next_logits, shortlist in zip(kept, logits, wanted, strict=True):
            keep = self._guarded(seq, failed, seq.advance, next_logits, shortlist)
            if keep is not None and keep >= 0:
                self.runner.truncate(seq.slot, len(seq.prompt_ids) + keep)

    @staticmethod
    def _shortlists(seqs: list[Sequence], logits: torch.Tensor) -> list[Shortlist | None]:
        """The shortlist each sequence wants of its logits, all computed in one batched pass."""
        wanted = [seq.shortlist_wanted() for seq in seqs]
        rows = [row for row, spec in enumerate(wanted) if spec is not None]
        result: list[Shortlist | None] = [None] * len(seqs)
        if rows:
            specs = [spec for spec in wanted if spec is not None]
            computed = shortlists(
                logits[rows], [size for size, _ in specs], [temp for _, temp in specs]
            )
            for row, shortlist in zip(rows, computed, strict=True):
                result[row] = shortlist
        return result

    def _guarded(
        self, seq: Sequence, failed: dict[str, str], call: Callable[..., T], *args: object
    ) -> T | None:
        """Run one sequence's own logic; an exception there fails that sequence alone."""
        try:
            return call(*args)
        except Exception as exc:
            logger.exception("sequence %s failed", seq.request_id)
            self._fail(seq, failed, exc)
            return None

    def _fail(self, seq: Sequence, failed: dict[str, str], exc: Exception) -> None:
        failed[seq.request_id] = f"{type(exc).__name__}: {exc}"
        self._by_id.pop(seq.request_id, None)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        self._prompt_states.pop(seq.request_id, None)
        if seq.slot >= 0:
            self.runner.truncate(seq.slot, 0)
        self.scheduler.release(seq)
        if not self.scheduler.holds(seq.prompt_ids):
            self._after_prompt.pop(tuple(seq.prompt_ids), None)
        self._by_id.pop(seq.request_id, None)
