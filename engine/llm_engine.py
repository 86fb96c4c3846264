"""The torch engine's step: schedule, run the model, sample the plain rows, postprocess."""

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
from engine.sequence import Keep, Sequence, TreeSequence

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A plain row to sample this step: its sequence and the next-token logits [V] to draw from.
Draw = tuple[Sequence, torch.Tensor]


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
    """Ties scheduler and runner together: plain rows are sampled by the engine in one batch;
    tree sequences (`TreeSequence`) decide their own tokens."""

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
        # Next-token logits [V] and token states [P, d] of each prompt a running slot holds.
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
        """One step.

        Schedule: admit waiting sequences and cut this step's prompt chunks. Run the model: the
        chunks in one forward, then every decoding row in one tree step (a plain row feeds its
        last token, a tree sequence its proposed candidates). Sample the next token of every
        plain row (those whose prompt just completed too) in one batched draw. Postprocess: the
        plain rows take their tokens, outputs are collected, finished sequences leave.
        """
        failed: dict[str, str] = {}
        cached = self._reuse_cached(self.scheduler.admit())
        chunks = self.scheduler.prefill_chunks()
        draws = self._prefill(chunks, failed)
        shared_draws, shared = self._share_prompts(failed)
        draws += shared_draws
        decoding = self.scheduler.decoding()
        starting = {seq.request_id for seq, _ in draws}
        rows = self._decoding_rows(decoding, starting, failed)
        if rows:
            draws += self._tree_step(rows, failed)
        self._sample(draws, failed)
        outputs = self._postprocess(decoding, failed)
        prefilled = sum(c.end - c.start for c in chunks if c.seq.request_id not in failed)
        return StepResult(outputs, failed, len(rows), prefilled, shared, cached)

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

    def _prefill(self, chunks: list[PrefillChunk], failed: dict[str, str]) -> list[Draw]:
        """Put the chunks in their slots; a sequence whose prompt is complete gets `on_prefill`,
        and a plain one's first token is drawn this step (the draws returned). A completed
        prompt is offered to the prefix cache and kept for running sequences with the same one.
        """
        if not chunks:
            return []
        out = self._batched(
            [c.seq for c in chunks],
            failed,
            "prefill",
            self.runner.extend,
            [c.seq.slot for c in chunks],
            [c.seq.prompt_ids[c.start : c.end] for c in chunks],
        )
        if out is None:
            return []
        draws: list[Draw] = []
        for row, chunk in enumerate(chunks):
            seq = chunk.seq
            self.scheduler.advance_prefill(chunk)
            self._prompt_states.setdefault(seq.request_id, []).append(out.states[row])
            if not chunk.last:
                continue
            parts = self._prompt_states.pop(seq.request_id)
            states = parts[0] if len(parts) == 1 else torch.cat(parts)
            if self.prefix_cache.wants(seq.prompt_ids):
                self.prefix_cache.add(self.runner.save_prompt(seq.slot, seq.prompt_ids, states))
            self._after_prompt[tuple(seq.prompt_ids)] = (out.logits[row].clone(), states)
            draws += self._start(seq, out.logits[row], states, failed)
        return draws

    def _share_prompts(self, failed: dict[str, str]) -> tuple[list[Draw], int]:
        """Copy each ready source's prompt K/V into its followers' slots and start them; their
        first draws and the prompt tokens copied."""
        draws: list[Draw] = []
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
            logits, states = self._after_prompt[tuple(source.prompt_ids)]
            for follower in followers:
                self.scheduler.shared(follower)
                copied += length
                draws += self._start(follower, logits.clone(), states, failed)
        return draws, copied

    def _start(
        self, seq: Sequence, logits: torch.Tensor, states: torch.Tensor, failed: dict[str, str]
    ) -> list[Draw]:
        """Hand a sequence whose prompt is in its slot the next-token logits (and, if it uses
        it, the prompt's mean penultimate state); a plain one's first draw."""
        state = states.mean(0) if seq.uses_prompt_state else None
        self._isolated(seq, failed, seq.on_prefill, logits, state)
        if seq.request_id in failed or isinstance(seq, TreeSequence):
            return []
        return [(seq, logits)]

    def _decoding_rows(
        self, decoding: list[Sequence], starting: set[str], failed: dict[str, str]
    ) -> list[tuple[Sequence, list[int]]]:
        """Each decoding row's candidates: a plain row's last token, a tree sequence's proposal.

        Plain rows whose prompt completed this step have no token yet (it is drawn this step).
        """
        rows: list[tuple[Sequence, list[int]]] = []
        for seq in decoding:
            if seq.request_id in failed or seq.request_id in starting:
                continue
            if not isinstance(seq, TreeSequence):
                rows.append((seq, seq.output_ids[-1:]))
                continue
            proposal = self._isolated(seq, failed, seq.propose)
            if proposal is not None:
                rows.append((seq, proposal))
        return rows

    def _tree_step(
        self, rows: list[tuple[Sequence, list[int]]], failed: dict[str, str]
    ) -> list[Draw]:
        """Evaluate every row's candidates in one forward, commit the kept ones, and project
        their next-token logits; tree sequences `advance`, plain rows are returned to draw."""
        batch = [seq for seq, _ in rows]
        out = self._batched(
            batch,
            failed,
            "tree step",
            self.runner.tree_step,
            [s.slot for s in batch],
            [c for _, c in rows],
        )
        if out is None:
            return []
        kept_rows: list[int] = []
        picks: list[int] = []
        for row, (seq, candidates) in enumerate(rows):
            if not isinstance(seq, TreeSequence):
                kept_rows.append(row)
                picks.append(0)
                continue
            m = len(candidates)
            probe = None if out.probe is None else out.probe[row, :m]
            choice = self._isolated(seq, failed, seq.choose, out.hidden[row, :m], probe)
            if isinstance(choice, Keep):
                kept_rows.append(row)
                picks.append(choice.index)
        if not kept_rows:
            return []
        kept = [batch[row] for row in kept_rows]
        self.runner.commit([s.slot for s in kept], picks)
        logits = self.runner.logits(out.final[kept_rows, picks])
        trees = [seq for seq in kept if isinstance(seq, TreeSequence)]
        if trees:
            tree_rows = [i for i, seq in enumerate(kept) if isinstance(seq, TreeSequence)]
            self._advance(trees, logits[tree_rows], failed)
        return [(seq, logits[i]) for i, seq in enumerate(kept) if not isinstance(seq, TreeSequence)]

    def _advance(
        self, seqs: list[TreeSequence], logits: torch.Tensor, failed: dict[str, str]
    ) -> None:
        """Hand each kept tree sequence its next-token logits; apply the rollbacks it returns."""
        wanted = self._batched(seqs, failed, "shortlists", self._shortlists, seqs, logits)
        if wanted is None:
            return
        for seq, next_logits, shortlist in zip(seqs, logits, wanted, strict=True):
            rollback = self._isolated(seq, failed, seq.advance, next_logits, shortlist)
            if rollback is not None:
                self.runner.truncate(seq.slot, len(seq.prompt_ids) + rollback.output_tokens)

    @staticmethod
    def _shortlists(seqs: list[TreeSequence], logits: torch.Tensor) -> list[Shortlist | None]:
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

    def _sample(self, draws: list[Draw], failed: dict[str, str]) -> None:
        """Draw every plain row's next token in one batched call and append it to its row."""
        if not draws:
            return
        seqs = [seq for seq, _ in draws]
        logits = torch.stack([row for _, row in draws])
        tokens = self._batched(
            seqs,
            failed,
            "sampling",
            sample_batch,
            logits,
            [s.params for s in seqs],
            [s.generator for s in seqs],
        )
        if tokens is None:
            return
        for seq, token, row in zip(seqs, tokens, logits, strict=True):
            self._isolated(seq, failed, seq.append_token, token, row)

    def _postprocess(
        self, decoding: list[Sequence], failed: dict[str, str]
    ) -> dict[str, SequenceOutput[Any]]:
        """Collect what each decoding sequence produced; release the finished ones."""
        outputs: dict[str, SequenceOutput[Any]] = {}
        for seq in decoding:
            if seq.request_id in failed:
                continue
            output = seq.take_output()
            if output is not None:
                outputs[seq.request_id] = output
            if seq.finished:
                self._release(seq)
        return outputs

    def _batched(
        self,
        seqs: list[Sequence],
        failed: dict[str, str],
        what: str,
        call: Callable[..., T],
        *args: object,
    ) -> T | None:
        """Run one batched operation; an exception there fails the batch's sequences only."""
        try:
            return call(*args)
        except Exception as exc:
            logger.exception("%s failed", what)
            for seq in seqs:
                self._fail(seq, failed, exc)
            return None

    def _isolated(
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
