"""A compact Llama-family forward (Llama, SmolLM2, Qwen2) over the slot KV cache."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from engine.attention import attention, prefers_grouped
from engine.kv_cache import SlotKVCache

SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM"})


@dataclass(frozen=True)
class ForwardStates:
    """Final-layer (normed) states, penultimate-layer states and the probe layer's, [B, Q, d]."""

    final: torch.Tensor
    penultimate: torch.Tensor
    probe: torch.Tensor | None


# On an Intel CPU a float32 product of fewer rows than this stays on MKL (`F.linear`): on a
# 2-core Xeon with AVX512, one product of the default model took MKL 0.5-0.8x oneDNN's prepacked
# time at 1-3 rows, 1.2-2.5x at 4-8 rows, about the same at prefill widths (a loaded machine).
# On the 2-core AMD EPYC measured, oneDNN's made even a 1-row step 0.58x as long (README).
MKL_SMALL_ROWS = 4


def can_prepack(weight: torch.Tensor) -> bool:
    """Whether oneDNN can hold this weight prepacked: on a CPU with oneDNN, bfloat16 or (on
    x86-64, where it was measured) float32."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.float32:
        return platform.machine().lower() in {"x86_64", "amd64"}
    return weight.dtype == torch.bfloat16


def is_intel_cpu() -> bool:
    """Whether this machine's CPU is Intel's (Linux: /proc/cpuinfo; elsewhere assumed not)."""
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class Projection:
    """A weight [out, in] (and bias) applied as `F.linear`; optionally also held prepacked.

    oneDNN's bfloat16 product reorders a plain weight into its blocked layout on every call;
    prepacking does that once, which makes the same products (bit for bit) 1.3-2x faster on an
    AMX CPU (docs/serving-history.md). In float32 `F.linear` runs MKL's products, and oneDNN's
    over a prepacked weight took half their time on a 2-core AMD CPU (README); they agree with
    MKL's to float32 rounding, not bit for bit. Products of fewer than `plain_below` rows take
    `F.linear` even when prepacked (`MKL_SMALL_ROWS`). Either way prepacking costs a second
    copy of the weight. The plain weight stays the source of truth: after changing it in place,
    call `repack()`.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, prepack: bool, plain_below: int
    ) -> None:
        self.weight = weight
        self.bias = bias
        self.plain_below = plain_below
        self.packed: torch.Tensor | None = None
        if prepack:
            self.repack()

    def repack(self) -> None:
        """Rebuild the prepacked copy from the plain weight."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or x.numel() < self.plain_below * x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


@dataclass(frozen=True)
class _Layer:
    """One decoder block's projections: fused QKV (with its bias, if any), output, fused
    gate-up, down; and the two norms' weights."""

    qkv: Projection
    out: Projection
    gate_up: Projection
    down: Projection
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why the compact forward cannot run this model, or None when it can."""
    config = model.config
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        return f"architecture {architecture}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "sliding-window attention"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") in {"dynamic", "longrope"}:
        return f"rope type {rope['rope_type']}"
    if getattr(config, "mlp_bias", False):
        return "MLP bias"
    block = model.model.layers[0]
    projections = (block.self_attn.q_proj, block.self_attn.o_proj, block.mlp.gate_proj)
    if any(type(p) is not torch.nn.Linear for p in projections):
        return "wrapped projections (adapters)"
    if block.self_attn.o_proj.bias is not None:
        return "output projection bias"
    return None


def _share_rows(linears: tuple[torch.nn.Linear, ...]) -> torch.Tensor:
    """The linears' weights stacked as one contiguous [sum(out), in] matrix.

    Each linear's weight becomes a view of its rows, so the transformers model keeps working on
    the same memory; `F.linear(x, matrix)` is then one product for all of them. (On this CPU
    that beats `x @ W` over a transposed [in, out] copy by 11-25% a decode step in bf16, and is
    within 9% either way in fp32.)
    """
    fused = torch.cat([m.weight.detach() for m in linears], dim=0).contiguous()
    offset = 0
    for linear in linears:
        width = linear.weight.shape[0]
        linear.weight.data = fused[offset : offset + width]
        offset += width
    return fused


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, as transformers' Llama does."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on [B, Q, heads, D] with cos/sin [B, Q, 1, D] (rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass(frozen=True)
class _Rows:
    """Moves per-token tensors between the padded [B, Q] layout and the packed real tokens."""

    batch: int
    width: int
    real: torch.Tensor | None

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[B * Q, ...] -> [tokens, ...]: the real tokens' entries (all of them without padding)."""
        return padded if self.real is None else padded.index_select(0, self.real)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[tokens, n] -> [B, Q, n], zeros at padding."""
        if self.real is not None:
            padded = packed.new_zeros(self.batch * self.width, packed.shape[-1])
            packed = padded.index_copy_(0, self.real, packed)
        return packed.view(self.batch, self.width, -1)


class LlamaForward:
    """The decoder of a loaded transformers Llama-family model, as a few fused matmuls per block.

    Weights are the loaded model's, stacked into [out, in] matrices (Q/K/V fused, gate/up fused)
    that the model's own linears then view, so no plain weight is held twice; rotary tables are
    precomputed by the model's own rotary module, so rope_theta and rope scaling are the
    config's. `forward` writes the new K/V through the slot cache's planned positions and
    attends under a boolean mask [B, Q, L] sliced to the batch's live key length L (SDPA, or
    grouped matmuls for narrow bfloat16 forwards on a CPU: `grouped_attention`); `head`
    projects final states to logits. `prepack` (default: where `can_prepack`) also holds every
    projection prepacked for oneDNN (float32 products of few rows on an Intel CPU still take
    MKL's: `MKL_SMALL_ROWS`); whoever writes the model's weights then calls `repack()`.
    """

    def __init__(
        self, model: PreTrainedModel, max_positions: int, prepack: bool | None = None
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"compact forward does not support {reason}")
        config = model.config
        base = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.eps = config.rms_norm_eps
        self.embed = base.embed_tokens.weight
        self.norm = base.norm.weight
        device, dtype = self.embed.device, self.embed.dtype
        if prepack is None:
            prepack = can_prepack(self.embed)
        on_mkl = dtype == torch.float32 and torch.backends.mkl.is_available() and is_intel_cpu()
        small_rows = MKL_SMALL_ROWS if on_mkl else 0

        def project(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Projection:
            return Projection(weight, bias, prepack, small_rows)

        self.layers = [self._fuse(layer, project) for layer in base.layers]
        self.head = project(model.lm_head.weight.detach())
        # Narrow forwards attend with grouped matmuls where SDPA is slow (engine.attention).
        self.grouped_attention = prefers_grouped(dtype, device)
        positions = torch.arange(max_positions, device=device)[None]
        with torch.inference_mode():
            cos, sin = base.rotary_emb(torch.zeros(1, dtype=dtype, device=device), positions)
        self.cos, self.sin = cos[0], sin[0]

    @staticmethod
    def _fuse(
        layer: torch.nn.Module, project: Callable[[torch.Tensor, torch.Tensor | None], Projection]
    ) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        bias = None
        if attn.q_proj.bias is not None:
            bias = torch.cat([p.bias.detach() for p in projections])
        return _Layer(
            qkv=project(_share_rows(projections), bias),
            out=project(_share_rows((attn.o_proj,)), None),
            gate_up=project(_share_rows((mlp.gate_proj, mlp.up_proj)), None),
            down=project(_share_rows((mlp.down_proj,)), None),
            attn_norm=layer.input_layernorm.weight.detach(),
            mlp_norm=layer.post_attention_layernorm.weight.detach(),
        )

    def projections(self) -> list[Projection]:
        """Every projection: the blocks' and the head."""
        blocks = [(b.qkv, b.out, b.gate_up, b.down) for b in self.layers]
        return [p for group in blocks for p in group] + [self.head]

    def repack(self) -> None:
        """Refresh prepacked weights after the model's weights were written in place."""
        for projection in self.projections():
            if projection.packed is not None:
                projection.repack()

    def set_prepacked(self, prepacked: bool) -> None:
        """Hold every projection prepacked, or drop the prepacked copies (plain `F.linear`)."""
        for projection in self.projections():
            projection.packed = None
            if prepacked:
                projection.repack()

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: SlotKVCache,
        probe_layer: int | None,
        real: torch.Tensor | None = None,
    ) -> ForwardStates:
        """Run ids [B, Q] at positions [B, Q]; `cache.plan()` must have been called.

        `real`: when rows are padded, the flat indices (into B * Q) of their real tokens. The
        per-token work (norms, projections, MLP) then runs on those tokens only, packed, and
        only attention sees the padded [B, Q] layout; states come back padded with zeros.
        """
        batch, width = ids.shape
        rows = _Rows(batch, width, real)
        x = F.embedding(rows.pack(ids.reshape(-1)), self.embed)
        cos = self.cos[positions][:, :, None]
        sin = self.sin[positions][:, :, None]
        attn_mask = mask[:, None]
        q_size = self.heads * self.head_dim
        kv_size = self.kv_heads * self.head_dim
        probe = x if probe_layer == 0 else None
        penultimate = x
        for index, layer in enumerate(self.layers):
            penultimate = x
            h = _rms_norm(x, layer.attn_norm, self.eps)
            qkv = rows.unpack(layer.qkv(h))
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = _rotate(q.view(batch, width, self.heads, self.head_dim), cos, sin)
            k = _rotate(k.view(batch, width, self.kv_heads, self.head_dim), cos, sin)
            v = v.view(batch, width, self.kv_heads, self.head_dim)
            keys, values = cache.update(k.transpose(1, 2), v.transpose(1, 2), index)
            attn = attention(q.transpose(1, 2), keys, values, attn_mask, self.grouped_attention)
            x = x + layer.out(rows.pack(attn.transpose(1, 2).reshape(batch * width, q_size)))
            h = _rms_norm(x, layer.mlp_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
            if probe_layer == index + 1:
                probe = x
        final = _rms_norm(x, self.norm, self.eps)
        if probe_layer == len(self.layers):
            probe = final  # transformers' last hidden state is the normed one
        final, penultimate = rows.unpack(final), rows.unpack(penultimate)
        probe = None if probe is None else rows.unpack(probe)
        return ForwardStates(final, penultimate, probe)
