"""Prompts kept after their sequences leave: K/V and per-token states, least recently used out."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedPrompt:
    """One prompt's keys and values per layer ([kv_heads, P, head_dim] each) and its tokens'
    penultimate-layer states [P, d], from which a prefix's prompt state is summed."""

    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    states: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes the entry holds."""
        tensors = [*self.keys, *self.values, self.states]
        return sum(t.numel() * t.element_size() for t in tensors)


class PrefixCache:
    """Prompts of at least `min_tokens`, evicted least recently used first beyond `max_bytes`.

    A new prompt reuses the longest prefix it shares with a kept one (a system prompt, a
    document asked about again), at most all but its last token, which is prefilled to get the
    next-token logits.
    """

    def __init__(self, max_bytes: int, min_tokens: int = 64) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def wants(self, prompt_ids: list[int]) -> bool:
        """Whether a prompt is worth keeping: long enough, new, and fits at all."""
        return (
            len(prompt_ids) >= self.min_tokens
            and tuple(prompt_ids) not in self._entries
            and self.max_bytes > 0
        )

    def longest_prefix(self, prompt_ids: list[int]) -> tuple[CachedPrompt, int] | None:
        """The kept prompt sharing the longest prefix with `prompt_ids`, and that length
        (at most `len(prompt_ids) - 1`); None below `min_tokens`. A hit becomes most recent."""
        if not self._entries:
            return None
        wanted = torch.tensor(prompt_ids[:-1])
        best: tuple[CachedPrompt, int] | None = None
        for entry in self._entries.values():
            n = min(len(entry.tokens), len(wanted))
            differs = (torch.tensor(entry.tokens[:n]) != wanted[:n]).nonzero()
            shared = int(differs[0, 0]) if len(differs) else n
            if shared >= self.min_tokens and (best is None or shared > best[1]):
                best = (entry, shared)
        if best is not None:
            self._entries.move_to_end(best[0].tokens)
        return best

    def add(self, entry: CachedPrompt) -> None:
        """Keep a prompt as the most recent, evicting the least recent ones past `max_bytes`."""
        if entry.nbytes > self.max_bytes or entry.tokens in self._entries:
            return
        self._entries[entry.tokens] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
