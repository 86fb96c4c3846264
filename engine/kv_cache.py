"""Slot-based preallocated KV cache that transformers models write into at per-slot offsets."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


class SlotKVCache(Cache):
    """Per layer a `[slots, kv_heads, max_len + 1, head_dim]` buffer and a length per slot.

    Before each forward, `plan()` says which slots the batch rows are and where each new token's
    K/V goes; `update()` (called by every attention layer) writes them there and returns the
    rows' keys and values up to the longest position in use. What a query may see is decided by
    the 4D mask the runner passes, so candidates written past a slot's length stay invisible to
    everything but themselves, and rolling a slot back is only moving its length.
    The last position is scratch space that padding tokens write to.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        max_len: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(layers=[])
        shape = (num_slots, kv_heads, max_len + 1, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_slots
        self.max_len = max_len
        self.scratch_position = max_len
        self._rows = torch.zeros(0, dtype=torch.long, device=device)
        self._positions = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._kv_len = 0

    def plan(self, slots: torch.Tensor, write_positions: torch.Tensor, kv_len: int) -> None:
        """Set the batch rows' slots [B], new tokens' cache positions [B, Q] and key length."""
        self._rows = slots
        self._positions = write_positions
        self._kv_len = kv_len

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new [B, heads, Q, dim] states at the planned positions; return [B, heads, L, d]."""
        rows = self._rows[:, None]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, self._positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[rows, :, self._positions] = value_states.transpose(1, 2).to(values.dtype)
        return keys[self._rows, :, : self._kv_len], values[self._rows, :, : self._kv_len]

    def move(self, slots: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> None:
        """Copy each slot's K/V at position `sources[i]` to position `targets[i]` in every layer."""
        for buffer in self.keys + self.values:
            buffer[slots, :, targets] = buffer[slots, :, sources]
