"""Attention of new tokens over the slot cache: SDPA, or grouped matmuls where CPU SDPA is slow."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The forwards that take the grouped matmuls: at least this many rows (below it SDPA was as
# fast or faster, 1-4 rows) of at most this many new tokens each (decode and tree steps, short
# prompt chunks; wider prefills keep SDPA, as fast or faster there). Measured, README.
GROUPED_MIN_ROWS = 8
GROUPED_MAX_WIDTH = 32


def prefers_grouped(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether narrow forwards should use `grouped_attention`: bfloat16 on a CPU.

    PyTorch's CPU flash kernel took 4-13x as long in bfloat16 as two batched matmuls for one new
    token a row over 8-32 rows (on an AVX512-BF16 CPU without AMX; README); in float32 it is
    about as fast, and stays.
    """
    return device.type == "cpu" and dtype == torch.bfloat16


def grouped_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Scaled dot-product attention as two matmuls, query heads grouped by their key head.

    ``q`` [B, H, Q, D], ``keys``/``values`` [B, KVH, L, D] with H a multiple of KVH (query head
    h reads key head h // (H / KVH), as transformers' `repeat_kv`), ``mask`` [B, 1, Q, L]
    (True: may attend). Scores and softmax are float32, as in SDPA's kernels (bfloat16 scores
    would double its error); the weights times the values run in the values' dtype. A query
    with no allowed key gets a uniform average rather than NaN.
    """
    batch, heads, width, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    grouped = q.reshape(batch, kv_heads, group * width, dim).float()
    scores = torch.matmul(grouped, keys.float().transpose(-1, -2))
    scores = scores.view(batch, kv_heads, group, width, -1).mul_(dim**-0.5)
    scores = scores.masked_fill_(~mask[:, :, None], torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(weights.view(batch, kv_heads, group * width, -1), values)
    return out.view(batch, heads, width, dim)


def attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    grouped: bool,
) -> torch.Tensor:
    """``q`` [B, H, Q, D] over ``keys``/``values`` [B, KVH, L, D] under ``mask`` [B, 1, Q, L];
    with ``grouped``, forwards of `GROUPED_MIN_ROWS` rows or more and at most
    `GROUPED_MAX_WIDTH` new tokens a row use the matmuls."""
    if grouped and q.shape[0] >= GROUPED_MIN_ROWS and q.shape[2] <= GROUPED_MAX_WIDTH:
        return grouped_attention(q, keys, values, mask)
    return F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != q.shape[1]
    )
