"""Masked scaled-dot-product attention: the one entry point every trunk layer calls.

`attention(q, k, v, mask)` takes q [B, H, Tq, D], k/v [B, H, Tkv, D] and a mask object from
`mmar.kernels.masks` (or None for full bidirectional attention). The torch path is the reference and
the CPU path: it lowers the mask to an SDPA bool mask. `q_offset` is the absolute position of the first
query, so a KV-cached decode step uses the same mask object as the full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmar.kernels.dispatch import resolve_impl
from mmar.kernels.masks import Mask


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask | None = None, q_offset: int = 0
) -> torch.Tensor:
    """Torch SDPA with the mask lowered to a bool tensor (the specification of the op)."""
    tq, tkv = q.shape[-2], k.shape[-2]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if mask.is_causal and q_offset + tq == tkv and tq in (1, tkv):  # full causal, or one decode step
        return F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1)
    bool_mask = mask.dense(tq, tkv, q_offset, device=q.device)  # (..., Tq, Tkv)
    if bool_mask.ndim == 3:  # per-sample mask (B, Tq, Tkv) -> broadcast over heads
        bool_mask = bool_mask[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Mask | None = None,
    q_offset: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    """Masked attention. q [B, H, Tq, D], k/v [B, H, Tkv, D] -> [B, H, Tq, D].

    Args:
        q, k, v: queries, keys and values.
        mask: a `Mask` object (Causal, Prefix, BlockCausal, Dense...) or None for full attention.
        q_offset: absolute sequence position of the first query (KV-cached decoding).
        impl: "auto" | "torch". "auto" picks the best available implementation for the device.
    """
    resolve_impl(impl, ("torch",))
    return attention_reference(q, k, v, mask, q_offset)
