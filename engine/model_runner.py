"""Batched forwards of a causal LM over the slot KV cache: extend (prefill) and tree step."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from engine.kv_cache import INITIAL_CACHE_LEN, SlotKVCache
from engine.llama import LlamaForward, unsupported_reason


@dataclass(frozen=True)
class PrefillOutput:
    """Per row: next-token logits [B, V] after its last new token, and the penultimate states
    [B, W, d] of its new tokens (`valid` [B, W] marks the real ones among the padding)."""

    logits: torch.Tensor
    states: torch.Tensor
    valid: torch.Tensor

    @functools.cached_property
    def hidden(self) -> torch.Tensor:
        """Mean penultimate state [B, d] over each row's new tokens, computed when first read."""
        return (self.states * self.valid[..., None]).sum(1) / self.valid.sum(1, keepdim=True)


@dataclass(frozen=True)
class TreeOutput:
    """Per row and candidate: final-layer states [B, M, d], penultimate-layer states [B, M, d]
    and, when the runner has a probe layer, that layer's states [B, M, d] (float32).

    `ModelRunner.logits(final[b, i])` is candidate i's next-token distribution; the engine asks
    only for the chosen candidates', sparing the vocabulary projection of the others.
    """

    final: torch.Tensor
    hidden: torch.Tensor
    probe: torch.Tensor | None = None


def pick_device(device: str) -> torch.device:
    """'auto' is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class ModelRunner:
    """Owns one model on one device and its slot cache; prepares tensors and runs forwards only."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        num_slots: int,
        max_model_len: int,
        max_candidates: int,
        probe_layer: int | None = None,
        initial_cache_len: int = INITIAL_CACHE_LEN,
        native: bool | None = None,
    ) -> None:
        """`native`: run the compact Llama-family forward (True; an error if unsupported), the
        transformers model (False), or None: the compact one when the model supports it and is
        frozen (a model being trained keeps the transformers forward, which sees its updates).
        """
        self.model = model.eval()
        config = model.config
        self.device = next(model.parameters()).device
        self.max_model_len = max_model_len
        self.max_candidates = max_candidates
        self.num_slots = num_slots
        # Hidden-state layer a hallucination probe reads (0: embeddings, i: after block i).
        self.probe_layer = probe_layer
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.cache = SlotKVCache(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            max_len=max_model_len + max_candidates,
            kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            dtype=next(model.parameters()).dtype,
            device=self.device,
            initial_len=initial_cache_len,
        )
        reason = unsupported_reason(model)
        if native is None:
            native = reason is None and not any(p.requires_grad for p in model.parameters())
        self.native = LlamaForward(model, max_model_len + max_candidates + 1) if native else None

    @property
    def backend(self) -> str:
        """Which forward runs: 'compact' (engine.llama) or 'transformers'."""
        return "compact" if self.native is not None else "transformers"

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        *,
        num_slots: int,
        max_model_len: int,
        max_candidates: int,
        device: str = "auto",
        dtype: str = "auto",
        probe_layer: int | None = None,
        native: bool | None = None,
    ) -> ModelRunner:
        """Load an HF model folder (frozen, sdpa attention) onto the chosen device.

        `native=False` forces the transformers forward even where the compact one applies.
        """
        target = pick_device(device)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=pick_dtype(dtype, target), attn_implementation="sdpa"
        ).to(target)
        model.requires_grad_(False)
        return cls(
            model,
            num_slots=num_slots,
            max_model_len=max_model_len,
            max_candidates=max_candidates,
            probe_layer=probe_layer,
            native=native,
        )

    def eos_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
        """Every token id that ends generation: the generation config's and the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        return frozenset(ids)

    def length(self, slot: int) -> int:
        """Committed tokens in a slot."""
        return self.cache.lengths[slot]

    def truncate(self, slot: int, length: int) -> None:
        """Roll a slot back to `length` committed tokens (refinement), or to 0 to free it."""
        if not 0 <= length <= self.cache.lengths[slot]:
            raise ValueError(f"cannot truncate slot {slot} to {length}")
        self.cache.lengths[slot] = length

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """Input embeddings [n, d] of token ids, as float32."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self.model.get_input_embeddings()(ids).float()

    @torch.inference_mode()
    def extend(self, slots: list[int], tokens: list[list[int]]) -> PrefillOutput:
        """Append each row's tokens to its slot (causal among themselves) and commit them all."""
        counts = [len(t) for t in tokens]
        width = max(counts)
        starts = [self.cache.lengths[s] for s in slots]
        if any(start + n > self.max_model_len for start, n in zip(starts, counts, strict=True)):
            raise ValueError("sequence longer than max_model_len")
        offsets = torch.arange(width, device=self.device)
        valid = offsets[None, :] < torch.tensor(counts, device=self.device)[:, None]
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool, device=self.device))
        relation = causal[None] & valid[:, None, :]
        out = self._forward(
            slots, tokens, starts, offsets[None, :].expand(len(slots), -1), relation
        )
        for slot, n in zip(slots, counts, strict=True):
            self.cache.lengths[slot] += n
        last = torch.tensor([n - 1 for n in counts], device=self.device)
        rows = torch.arange(len(slots), device=self.device)
        return PrefillOutput(self.logits(out.final[rows, last]), out.hidden, valid)

    @torch.inference_mode()
    def tree_step(self, slots: list[int], candidates: list[list[int]]) -> TreeOutput:
        """Evaluate each row's candidate tokens side by side at the slot's next position.

        Candidate i sees the committed prefix and itself only. Nothing is committed: call
        `commit()` with the chosen candidate of each row afterwards.
        """
        width = max(len(c) for c in candidates)
        if width > self.max_candidates:
            raise ValueError(f"at most {self.max_candidates} candidates per step")
        starts = [self.cache.lengths[s] for s in slots]
        if any(start >= self.max_model_len for start in starts):
            raise ValueError("sequence longer than max_model_len")
        eye = torch.eye(width, dtype=torch.bool, device=self.device)
        positions = torch.zeros(len(slots), width, dtype=torch.long, device=self.device)
        return self._forward(
            slots, candidates, starts, positions, eye[None].expand(len(slots), -1, -1)
        )

    @torch.inference_mode()
    def logits(self, final_states: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) from final-layer states [..., d]."""
        if self.native is not None:
            return self.native.head(final_states).float()
        return self.model.lm_head(final_states).float()

    def commit(self, slots: list[int], chosen: list[int]) -> None:
        """Keep candidate `chosen[i]` of the last tree step as slot i's next token."""
        starts = torch.tensor([self.cache.lengths[s] for s in slots], device=self.device)
        picks = torch.tensor(chosen, device=self.device)
        moving = picks != 0
        if bool(moving.any()):
            index = torch.tensor(slots, device=self.device)[moving]
            self.cache.move(index, (starts + picks)[moving], starts[moving])
        for slot in slots:
            self.cache.lengths[slot] += 1

    def _forward(
        self,
        slots: list[int],
        tokens: list[list[int]],
        starts: list[int],
        relative_positions: torch.Tensor,
        relation: torch.Tensor,
    ) -> TreeOutput:
        """One forward. `relation[b, q, k]`: new token q of row b may attend new token k."""
        batch, width = relation.shape[0], relation.shape[1]
        counts = torch.tensor([len(t) for t in tokens], device=self.device)
        start = torch.tensor(starts, device=self.device)
        padded = [row + [0] * (width - len(row)) for row in tokens]
        ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        offsets = torch.arange(width, device=self.device)
        is_real = offsets[None, :] < counts[:, None]
        kv_len = max(s + len(t) for s, t in zip(starts, tokens, strict=True))
        self.cache.reserve(kv_len)
        write = torch.where(is_real, start[:, None] + offsets[None, :], self.cache.scratch_position)
        # Key position p holds new token p - start (if any): look its relation up per query.
        new_index = torch.arange(kv_len, device=self.device)[None, :] - start[:, None]
        is_new = (new_index >= 0) & (new_index < counts[:, None])
        lookup = new_index.clamp(0, width - 1)[:, None, :].expand(batch, width, kv_len)
        mask = relation.gather(2, lookup) & is_new[:, None, :]
        mask |= torch.arange(kv_len, device=self.device)[None, None, :] < start[:, None, None]
        mask[:, :, 0] |= ~is_real
        self.cache.plan(slots, write, kv_len)
        # Padding goes to position 0: past a short row's end it could leave the rotary table.
        positions = torch.where(is_real, start[:, None] + relative_positions, 0)
        if self.native is not None:
            real = None if bool(is_real.all()) else is_real.view(-1).nonzero().squeeze(1)
            states = self.native.forward(ids, positions, mask, self.cache, self.probe_layer, real)
            probe = None if states.probe is None else states.probe.float()
            return TreeOutput(states.final, states.penultimate.float(), probe)
        base = self.model.model(
            input_ids=ids,
            attention_mask=mask[:, None],
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=True,
        )
        penultimate = base.hidden_states[-2]
        probe = None if self.probe_layer is None else base.hidden_states[self.probe_layer].float()
        return TreeOutput(final=base.last_hidden_state, hidden=penultimate.float(), probe=probe)
