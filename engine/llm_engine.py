"""The torch engine's step: schedule, run the model, sample the plain rows, postprocess."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from engine.model_runner import ModelRunner, PrefillOutput
from engine.outputs import SequenceOutput
from engine.sampling import Shortlist, sample_batch, shortlists
from engine.scheduler import PrefillChunk, Scheduler
from engine.sequence import Keep, Sequence, TreeSequence

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A plain row to sample this step: its sequence and the next-token logits [V] to draw from.
Draw = tuple[Sequence, torch.Tensor]


@dataclass(frozen=True)
class StepResult:
    """Outputs of one engine step, per request id, and the size of the batched forward."""

    outputs: dict[str, SequenceOutput[Any]]
    failed: dict[str, str]
    batch_size: int


class LLMEngine:
    """Ties scheduler and runner together: plain rows are sampled by the engine in one batch;
    tree sequences (`TreeSequence`) decide their own tokens."""

    def __init__(self, runner: ModelRunner, max_prefill_tokens: int = 2048) -> None:
        """`max_prefill_tokens`: prompt tokens put into the cache per step (chunked prefill)."""
        self.runner = runner
        self.scheduler = Scheduler(runner.num_slots, max_prefill_tokens)
        self._by_id: dict[str, Sequence] = {}
        self._prompt_sums: dict[str, torch.Tensor] = {}

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
        self.scheduler.admit()
        draws = self._prefill(self.scheduler.prefill_chunks(), failed)
        decoding = self.scheduler.decoding()
        starting = {seq.request_id for seq, _ in draws}
        rows = self._decoding_rows(decoding, starting, failed)
        if rows:
            draws += self._tree_step(rows, failed)
        self._sample(draws, failed)
        return StepResult(self._postprocess(decoding, failed), failed, len(rows))

    def _prefill(self, chunks: list[PrefillChunk], failed: dict[str, str]) -> list[Draw]:
        """Put the chunks in their slots; a sequence whose prompt is complete gets `on_prefill`,
        and a plain one's first token is drawn this step (the draws returned)."""
        if not chunks:
            return []
        try:
            out = self.runner.extend(
                [c.seq.slot for c in chunks], [c.seq.prompt_ids[c.start : c.end] for c in chunks]
            )
        except Exception as exc:  # one bad batch fails its own requests only
            logger.exception("prefill failed")
            for chunk in chunks:
                self._fail(chunk.seq, failed, exc)
            return []
        draws: list[Draw] = []
        for row, chunk in enumerate(chunks):
            seq = chunk.seq
            self.scheduler.advance_prefill(chunk)
            state = self._prompt_state(chunk, out, row) if seq.uses_prompt_state else None
            if not chunk.last:
                continue
            self._isolated(seq, failed, seq.on_prefill, out.logits[row], state)
            if seq.request_id not in failed and not isinstance(seq, TreeSequence):
                draws.append((seq, out.logits[row]))
        return draws

    def _prompt_state(self, chunk: PrefillChunk, out: PrefillOutput, row: int) -> torch.Tensor:
        """The mean penultimate state over the whole prompt once `chunk` completes it (until
        then, the running sum over the chunks so far)."""
        request_id = chunk.seq.request_id
        total = out.hidden[row] * (chunk.end - chunk.start)
        if chunk.start > 0:
            total = total + self._prompt_sums.pop(request_id)
        if not chunk.last:
            self._prompt_sums[request_id] = total
            return total
        return total / len(chunk.seq.prompt_ids)

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
        try:
            out = self.runner.tree_step([s.slot for s in batch], [c for _, c in rows])
        except Exception as exc:
            logger.exception("tree step failed")
            for seq in batch:
                self._fail(seq, failed, exc)
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
        try:
            wanted = self._shortlists(seqs, logits)
        except Exception as exc:
            logger.exception("shortlists failed")
            for seq in seqs:
                self._fail(seq, failed, exc)
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
        try:
            tokens = sample_batch(logits, [s.params for s in seqs], [s.generator for s in seqs])
        except Exception as exc:
            logger.exception("sampling failed")
            for seq in seqs:
                self._fail(seq, failed, exc)
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
        self._prompt_sums.pop(seq.request_id, None)
        if seq.slot >= 0:
            self.runner.truncate(seq.slot, 0)
        self.scheduler.release(seq)
        self._by_id.pop(seq.request_id, None)
