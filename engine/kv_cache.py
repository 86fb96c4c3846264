"""Slot KV cache that transformers models write into at per-slot offsets; grows on demand."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

# Positions a slot cache holds before its first growth.
INITIAL_CACHE_LEN = 256


def kv_bytes_per_token(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes across all layers of a model."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


class SlotKVCache(Cache):
    """Per layer a `[slots, kv_heads, capacity + 1, head_dim]` buffer and a length per slot.

    Before each forward, `reserve()` makes room for the positions it writes (the length
    dimension doubles, up to `max_len`, keeping its contents), so memory follows the longest
    live sequence rather than the longest allowed one. `plan()` then says which slots the batch
    rows are and where each new token's K/V goes; `update()` (called by every attention layer)
    writes them there and returns the rows' keys and values up to the longest position in use.
    What a query may see is decided by the 4D mask the runner passes, so candidates written past
    a slot's length stay invisible to everything but themselves, and rolling a slot back is only
    moving its length. The last position is scratch space that padding tokens write to.
    When the rows are consecutive slots in order, `update()` returns views of the buffers, not
    gathered copies (attention reads the strided views about 3x faster than it gathers).
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
        initial_len: int = INITIAL_CACHE_LEN,
    ) -> None:
        super().__init__(layers=[])
        self.capacity = min(initial_len, max_len)
        shape = (num_slots, kv_heads, self.capacity + 1, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_slots
        self.max_len = max_len
        self._rows = torch.zeros(0, dtype=torch.long, device=device)
        self._positions = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._kv_len = 0
        self._consecutive: slice | None = None

    @property
    def scratch_position(self) -> int:
        """The position padding tokens write to: one past the last usable one."""
        return self.capacity

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers of all layers."""
        return sum(b.numel() * b.element_size() for b in self.keys + self.values)

    def reserve(self, length: int) -> None:
        """Make positions `[0, length)` usable; call between forwards only.

        Grows the length dimension to at least double its size (at most `max_len`), copying
        every position held so far; raises ValueError past `max_len`.
        """
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise ValueError(f"{length} positions exceed the cache's {self.max_len}")
        capacity = min(self.max_len, max(length, 2 * self.capacity))
        # Ordinary tensors even when called in inference mode, so later in-place moves work.
        with torch.inference_mode(False):
            for buffers in (self.keys, self.values):
                for layer, old in enumerate(buffers):
                    slots, heads, _, dim = old.shape
                    new = old.new_zeros(slots, heads, capacity + 1, dim)
                    new[:, :, : self.capacity] = old[:, :, : self.capacity]
                    buffers[layer] = new
        self.capacity = capacity

    def plan(self, slots: list[int], write_positions: torch.Tensor, kv_len: int) -> None:
        """Set the batch rows' slots [B], new tokens' cache positions [B, Q] and key length."""
        self._rows = torch.tensor(slots, device=write_positions.device)
        self._positions = write_positions
        self._kv_len = kv_len
        first = slots[0]
        consecutive = slots == list(range(first, first + len(slots)))
        self._consecutive = slice(first, first + len(slots)) if consecutive else None

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
        rows = self._consecutive if self._consecutive is not None else self._rows
        return keys[rows, :, : self._kv_len], values[rows, :, : self._kv_len]

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Give each target slot the source slot's first `length` positions (a shared prompt)."""
        if length > self.lengths[source]:
            raise ValueError(f"slot {source} holds {self.lengths[source]} positions, not {length}")
        self.reserve(length)
        rows = torch.tensor(targets, device=self.keys[0].device)
        for buffer in self.keys + self.values:
            buffer[rows, :, :length] = buffer[source, :, :length]
        for target in targets:
            self.lengths[target] = length

    def read_prefix(self, slot: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of a slot's first `length` keys and values, per layer [kv_heads, length, dim]."""
        keys = [buffer[slot, :, :length].clone() for buffer in self.keys]
        return keys, [buffer[slot, :, :length].clone() for buffer in self.values]

    def write_prefix(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Make a slot hold exactly these keys and values (per layer [kv_heads, length, dim])."""
        length = keys[0].shape[1]
        self.reserve(length)
        for buffer, part in zip(self.keys + self.values, keys + values, strict=True):
            buffer[slot, :, :length] = part
        self.lengths[slot] = length

    def move(self, slots: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> None:
        """Copy each slot's K/V at position `sources[i]` to position `targets[i]` in every layer."""
        for buffer in self.keys + self.values:
            buffer[slots, :, targets] = buffer[slots, :, sources]
