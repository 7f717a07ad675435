"""Triton linear cross-entropy (Cut Cross-Entropy style): logits live only in registers, one tile at a
time, in the forward (online log-sum-exp per row) and in the backward (recomputed per tile, softmax
times the row's loss weight, accumulated into dh and dW with atomics). The target logit and the one-hot
part of the gradient are O(N D) gathers done in torch. Import this module only on the Triton path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmar.kernels.triton_support import interpreting


@triton.jit
def _logits_tile(
    Hd, W, B, rows, cols, in_rows, in_cols, D, s_h, s_w, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr
):
    """fp32 logits [rows, cols] = h[rows] @ W[cols]^T (+ b[cols]), accumulated over BLOCK_D chunks."""
    logits = tl.zeros([rows.shape[0], cols.shape[0]], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        in_d = ds < D
        h = tl.load(Hd + rows[:, None] * s_h + ds[None, :], mask=in_rows[:, None] & in_d[None, :], other=0.0)
        w = tl.load(W + cols[None, :] * s_w + ds[:, None], mask=in_cols[None, :] & in_d[:, None], other=0.0)
        logits += tl.dot(h, w)
    if HAS_BIAS:
        logits += tl.load(B + cols, mask=in_cols, other=0.0).to(tl.float32)[None, :]
    return logits


@triton.jit
def _lse_kernel(
    Hd,
    W,
    B,
    LSE,
    N,
    V,
    D,
    s_h,
    s_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_rows = rows < N
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_cols = cols < V
        logits = _logits_tile(Hd, W, B, rows, cols, in_rows, in_cols, D, s_h, s_w, HAS_BIAS, BLOCK_D)
        logits = tl.where(in_cols[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
    tl.store(LSE + rows, m + tl.log(acc), mask=in_rows)


@triton.jit
def _grad_kernel(
    Hd,
    W,
    B,
    LSE,
    COEF,
    DH,
    DW,
    DB,
    N,
    V,
    D,
    s_h,
    s_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One (rows, vocabulary) tile: P = softmax * coef, dh += P W, dW += P^T h, db += colsum(P)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_rows, in_cols = rows < N, cols < V
    coef = tl.load(COEF + rows, mask=in_rows, other=0.0)
    if tl.max(tl.abs(coef), 0) > 0:  # rows all ignored: nothing to add
        logits = _logits_tile(Hd, W, B, rows, cols, in_rows, in_cols, D, s_h, s_w, HAS_BIAS, BLOCK_D)
        lse = tl.load(LSE + rows, mask=in_rows, other=0.0)
        p = tl.exp(logits - lse[:, None]) * coef[:, None]
        p = tl.where(in_rows[:, None] & in_cols[None, :], p, 0.0)
        if HAS_BIAS:
            tl.atomic_add(DB + cols, tl.sum(p, 0), mask=in_cols)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            in_d = ds < D
            h = tl.load(Hd + rows[:, None] * s_h + ds[None, :], mask=in_rows[:, None] & in_d[None, :])
            w = tl.load(W + cols[:, None] * s_w + ds[None, :], mask=in_cols[:, None] & in_d[None, :])
            tl.atomic_add(
                DH + rows[:, None] * D + ds[None, :],
                tl.dot(p.to(w.dtype), w),
                mask=in_rows[:, None] & in_d[None, :],
            )
            tl.atomic_add(
                DW + cols[:, None] * D + ds[None, :],
                tl.dot(tl.trans(p).to(h.dtype), h),
                mask=in_cols[:, None] & in_d[None, :],
            )


def _blocks() -> tuple[int, int, int]:
    return (16, 16, 16) if interpreting() else (64, 128, 64)  # (rows, vocabulary, hidden) per tile


def log_sum_exp(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """logsumexp(hidden @ weight.T + bias, -1) [N] in fp32, without the [N, V] logits."""
    (n, d), v = hidden.shape, weight.shape[0]
    bn, bv, bd = _blocks()
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    _lse_kernel[(triton.cdiv(n, bn),)](
        hidden, weight, bias if bias is not None else lse, lse, n, v, d, hidden.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd,
    )  # fmt: skip
    return lse


def softmax_grads(hidden, weight, bias, lse, coef):
    """fp32 (sum_v P W_v, sum_i P h_i, sum_i P) for P = softmax(logits) * coef[:, None]."""
    (n, d), v = hidden.shape, weight.shape[0]
    bn, bv, bd = _blocks()
    dh = torch.zeros(n, d, dtype=torch.float32, device=hidden.device)
    dw = torch.zeros(v, d, dtype=torch.float32, device=hidden.device)
    db = torch.zeros(v, dtype=torch.float32, device=hidden.device)
    _grad_kernel[(triton.cdiv(n, bn), triton.cdiv(v, bv))](
        hidden, weight, bias if bias is not None else db, lse, coef, dh, dw, db, n, v, d,
        hidden.stride(0), weight.stride(0), HAS_BIAS=bias is not None, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd,
    )  # fmt: skip
    return dh, dw, db
