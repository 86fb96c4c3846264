"""Decides which sequences run: a waiting queue, the running set, slots and prefill chunks."""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from engine.sequence import Sequence


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, end) of one sequence to put into its slot this step."""

    seq: Sequence
    start: int
    end: int

    @property
    def last(self) -> bool:
        """Whether this chunk completes the prompt."""
        return self.end == len(self.seq.prompt_ids)


class Scheduler:
    """FIFO admission into a fixed number of KV-cache slots; prompts enter in chunks.

    A running sequence whose prompt is not all in its slot yet is prefilling; each step
    gives prefilling sequences (oldest first) prompt chunks within a token budget, so a long
    prompt is spread over several steps and the decoding sequences keep moving meanwhile.
    A new sequence takes the lowest free slot, and batches list their rows by slot, so a
    busy engine's rows are mostly consecutive slots (which the cache reads without copying).

    A sequence whose prompt equals that of a running one (a request's other chains or `n`
    choices, or the same prompt sent twice) is not prefilled: it waits as a follower of that
    source until the source's prompt is all in its slot, and the engine then copies the
    prompt's K/V into the follower's slot (`shares_ready`, `shared`).
    """

    def __init__(self, num_slots: int, max_prefill_tokens: int) -> None:
        if max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be positive")
        self.free_slots = list(range(num_slots))  # a heap: the lowest free slot first
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.prefilled: dict[str, int] = {}
        self.following: dict[Sequence, Sequence] = {}  # follower -> the holder it copies
        self._holders: dict[tuple[int, ...], list[Sequence]] = {}

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Give free slots to waiting sequences, oldest first; they start prefilling."""
        admitted: list[Sequence] = []
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = heapq.heappop(self.free_slots)
            holders = self._holders.setdefault(tuple(seq.prompt_ids), [])
            source = self._source(holders)
            if source is None:
                self.prefilled[seq.request_id] = 0
            else:
                self.following[seq] = source
            holders.append(seq)
            admitted.append(seq)
            self.running.append(seq)
        return admitted

    def prefill_chunks(self) -> list[PrefillChunk]:
        """This step's prompt chunks, oldest sequence first within the token budget, by slot."""
        chunks: list[PrefillChunk] = []
        budget = self.max_prefill_tokens
        for seq in self.running:
            done = self.prefilled.get(seq.request_id)
            if done is None or budget == 0:
                continue
            end = min(len(seq.prompt_ids), done + budget)
            chunks.append(PrefillChunk(seq, done, end))
            budget -= end - done
        return sorted(chunks, key=lambda chunk: chunk.seq.slot)

    def advance_prefill(self, chunk: PrefillChunk) -> None:
        """Record a chunk as in the slot; a completed prompt makes its sequence decode."""
        if chunk.last:
            self.prefilled.pop(chunk.seq.request_id, None)
        else:
            self.prefilled[chunk.seq.request_id] = chunk.end

    def prefills_from_start(self, seq: Sequence) -> bool:
        """Whether a sequence is to prefill its prompt and has put none of it in its slot."""
        return self.prefilled.get(seq.request_id) == 0

    def skip_prefill(self, seq: Sequence, length: int) -> None:
        """Record a prompt's first `length` tokens as already in the sequence's slot."""
        self.prefilled[seq.request_id] = length

    def shares_ready(self) -> dict[Sequence, list[Sequence]]:
        """Followers whose source's prompt is all in its slot now, by source."""
        ready: dict[Sequence, list[Sequence]] = {}
        for follower, source in self.following.items():
            if self._holds_prompt(source):
                ready.setdefault(source, []).append(follower)
        return ready

    def shared(self, follower: Sequence) -> None:
        """Record a follower's prompt as copied into its slot: it decodes from now on."""
        self.following.pop(follower, None)

    def holds(self, prompt_ids: list[int]) -> bool:
        """Whether a running sequence has (or is getting) this prompt in its slot."""
        return tuple(prompt_ids) in self._holders

    def decoding(self) -> list[Sequence]:
        """Running sequences whose prompts are all in their slots, by slot."""
        decoding = [s for s in self.running if self._holds_prompt(s)]
        return sorted(decoding, key=lambda seq: seq.slot)

    def release(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and free its slot; its followers find another
        source, or the first of them prefills the prompt itself."""
        self.prefilled.pop(seq.request_id, None)
        self.following.pop(seq, None)
        key = tuple(seq.prompt_ids)
        holders = self._holders.get(key, [])
        if seq in holders:
            holders.remove(seq)
            if not holders:
                del self._holders[key]
        for orphan in [f for f, source in self.following.items() if source is seq]:
            source = self._source(holders)
            if source is None:
                del self.following[orphan]
                self.prefilled[orphan.request_id] = 0
            else:
                self.following[orphan] = source
        if seq in self.running:
            self.running.remove(seq)
            heapq.heappush(self.free_slots, seq.slot)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.slot = -1

    def _holds_prompt(self, seq: Sequence) -> bool:
        return seq.request_id not in self.prefilled and seq not in self.following

    def _source(self, holders: list[Sequence]) -> Sequence | None:
        """The holder a new follower copies from: one that prefills the prompt or holds it."""
        return next((s for s in holders if s not in self.following), None)

    def has_work(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)
