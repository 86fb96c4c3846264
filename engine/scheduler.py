"""Decides which sequences run: a waiting queue, the running set and the slot allocator."""

from __future__ import annotations

from collections import deque

from engine.sequence import Sequence


class Scheduler:
    """FIFO admission into a fixed number of KV-cache slots, bounded by a prefill token budget."""

    def __init__(self, num_slots: int, max_prefill_tokens: int) -> None:
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Give slots to waiting sequences (oldest first) within the prefill budget."""
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and self.free_slots:
            seq = self.waiting[0]
            if admitted and len(seq.prompt_ids) > budget:
                break
            self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            budget -= len(seq.prompt_ids)
            admitted.append(seq)
            self.running.append(seq)
        return admitted

    def release(self, seq: Sequence) -> None:
        """Take a sequence out of the queues and free its slot."""
        if seq in self.running:
            self.running.remove(seq)
            self.free_slots.append(seq.slot)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.slot = -1

    def has_work(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)
