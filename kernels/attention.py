"""Masked scaled-dot-product attention: the one entry point every trunk layer calls.

`attention(q, k, v, mask)` takes q [B, H, Tq, D], k/v [B, H, Tkv, D] and a mask object from
`mmar.kernels.masks` (or None for full bidirectional attention). `q_offset` is the absolute position of
the first query, so a KV-cached decode step uses the same mask object as the full forward.

- torch (the reference, and the CPU path): SDPA with the mask lowered to a bool tensor.
- triton: masked flash attention (`triton_attention.py`) over per-block tile lists; a short query
  block without gradients (a decode step) splits the KV cache across programs and merges the parts.
Rows that may attend to no key give zeros on both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmar.kernels.block_lists import cached_plan
from mmar.kernels.dispatch import resolve_impl
from mmar.kernels.masks import Dense, Mask
from mmar.kernels.triton_support import interpreting

HEAD_DIMS = (16, 32, 64, 128)  # what the Triton kernel is compiled for
DECODE_ROWS = 16  # a query block this short without gradients takes the split-KV decode path


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
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)
    return out.masked_fill(~bool_mask.any(-1, keepdim=True), 0.0)  # rows with no key: zeros


def _block_sizes(decode: bool) -> tuple[int, int]:
    if interpreting():
        return 16, 16  # small tiles: tests cover several blocks on tiny shapes
    return (DECODE_ROWS, 64) if decode else (64, 64)


def _decode_splits(batch_heads: int, kv_blocks: int) -> int:
    """Enough programs to fill a GPU when batch x heads alone do not (flash-decoding)."""
    return max(1, min(kv_blocks, 16, 256 // max(batch_heads, 1)))


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, q_offset, decode, splits):
        from mmar.kernels import triton_attention

        block_m, block_n = _block_sizes(decode)
        plan = cached_plan(mask, q.shape[2], k.shape[2], q_offset, block_m, block_n, q.device)
        out, lse = triton_attention.forward(q, k, v, plan, q_offset, splits)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.q_offset = plan, q_offset
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from mmar.kernels import triton_attention

        q, k, v, out, lse = (t.contiguous() for t in ctx.saved_tensors)
        grad_out = grad_out.contiguous()
        dq, dk, dv = triton_attention.backward(grad_out, q, k, v, out, lse, ctx.plan, ctx.q_offset)
        return dq, dk, dv, None, None, None, None


def _triton_problem(q, k, v, mask) -> str | None:
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of the Triton kernel's {HEAD_DIMS}"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[:2] != k.shape[:2] or k.shape != v.shape:
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share batch and heads"
    if isinstance(mask, Dense) and mask.mask.ndim > 3:
        return f"a per-head dense mask {tuple(mask.mask.shape)} (the kernel takes [T, T] or [B, T, T])"
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Mask | None = None,
    q_offset: int = 0,
    impl: str = "auto",
    splits: int | None = None,
) -> torch.Tensor:
    """Masked attention. q [B, H, Tq, D], k/v [B, H, Tkv, D] -> [B, H, Tq, D].

    Args:
        q, k, v: queries, keys and values.
        mask: a `Mask` object (Causal, Prefix, BlockCausal, Dense...) or None for full attention.
        q_offset: absolute sequence position of the first query (KV-cached decoding).
        impl: "auto" (Triton on CUDA for head dims 16/32/64/128, else torch) | "torch" | "triton".
        splits: Triton only: KV splits of the decode path (None = chosen from the shape; 1 = plain).
    """
    impl = resolve_impl(impl, q, k, v, problem=_triton_problem(q, k, v, mask))
    if impl == "torch":
        return attention_reference(q, k, v, mask, q_offset)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    decode = q.shape[2] <= DECODE_ROWS and not needs_grad
    if splits is None:
        splits = _decode_splits(q.shape[0] * q.shape[1], -(-k.shape[2] // 64)) if decode else 1
    elif splits > 1 and not decode:
        raise ValueError(f"splits={splits} is for decoding only (<= {DECODE_ROWS} queries, no gradients)")
    return _FlashAttention.apply(q, k, v, mask, q_offset, decode, splits)
