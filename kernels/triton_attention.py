"""Triton masked flash attention: FlashAttention-2 forward and backward, and a split-KV decode path.

Each program owns one query block (forward, dQ) or one KV block (dK, dV) of one (batch, head) and walks
only the tiles its block lists name (see `block_lists.py`): partial tiles evaluate the mask in-kernel,
full tiles skip it. The softmax is computed online in base 2 (scores scaled by log2 e); rows that see
no key at all produce zeros, as torch's SDPA does. Import this module only when the Triton path is
used: `TRITON_INTERPRET=1` must be set before triton is first imported to run it on CPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mmar.kernels.block_lists import AttentionPlan

LOG2E = 1.4426950408889634


@triton.jit
def _allowed(q_pos, kv_pos, q_row, mask_b, ids_ptr, dense_ptr, s_db, s_dq, s_dk, prefix, KIND: tl.constexpr):
    """The mask predicate on broadcastable position tensors (absolute q_pos, kv_pos; q_row is relative).
    KIND is one of block_lists.KIND_* (0 none, 1 causal, 2 prefix, 3 block ids, 4 dense)."""
    if KIND == 1:  # causal
        ok = kv_pos <= q_pos
    elif KIND == 2:  # bidirectional prefix, then causal
        ok = (kv_pos <= q_pos) | (kv_pos < prefix)
    elif KIND == 3:  # block ids: kv visible iff ids[kv] <= ids[q]
        ok = tl.load(ids_ptr + kv_pos) <= tl.load(ids_ptr + q_pos)
    elif KIND == 4:  # explicit mask
        ok = tl.load(dense_ptr + mask_b * s_db + q_row * s_dq + kv_pos * s_dk) != 0
    else:
        ok = (kv_pos >= 0) & (q_pos >= 0)
    return ok


@triton.jit
def _tile(j, n_partial, p_idx, f_idx, index_at):
    """The j-th tile of a block's walk: its partial tiles first, then its full ones."""
    if j < n_partial:  # noqa: SIM108 (a runtime condition: Triton takes no ternary on tensors)
        tile = tl.load(p_idx + index_at + j)
    else:
        tile = tl.load(f_idx + index_at + j - n_partial)
    return tile


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_os,
    s_ob,
    s_oh,
    s_ot,
    s_ls,
    s_lb,
    s_lh,
    H,
    Tq,
    Tkv,
    q_offset,
    qk_scale,
    p_cnt,
    p_idx,
    f_cnt,
    f_idx,
    s_cb,
    s_cr,
    s_ib,
    s_ir,
    ids_ptr,
    dense_ptr,
    s_db,
    s_dq,
    s_dk,
    prefix,
    KIND: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_m, pid_bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // H, pid_bh % H
    mask_b = b if s_cb != 0 else 0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        mask=offs_m[:, None] < Tq,
        other=0.0,
    )
    k_base, v_base = K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    q_rows = tl.minimum(offs_m, Tq - 1)  # rows past the end read the last row's mask (never stored)
    count_at, index_at = mask_b * s_cb + pid_m * s_cr, mask_b * s_ib + pid_m * s_ir
    n_partial = tl.load(p_cnt + count_at)
    for j in range(split, n_partial + tl.load(f_cnt + count_at), SPLITS):  # partial tiles first
        start_n = _tile(j, n_partial, p_idx, f_idx, index_at) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_kv = offs_n < Tkv
        k = tl.load(k_base + offs_n[None, :] * s_kt + offs_d[:, None], mask=in_kv[None, :], other=0.0)
        s = tl.dot(q, k) * qk_scale  # (BM, BN), base-2 logits
        if j < n_partial:  # the mask is evaluated on partial tiles only
            kv_safe = tl.where(in_kv, offs_n, 0)
            ok = _allowed(
                (q_rows + q_offset)[:, None],
                kv_safe[None, :],
                q_rows[:, None],
                mask_b,
                ids_ptr,
                dense_ptr,
                s_db,
                s_dq,
                s_dk,
                prefix,
                KIND,
            )
            s = tl.where(ok & in_kv[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: avoid (-inf) - (-inf)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=in_kv[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    in_q = offs_m < Tq
    o_ptr = Out + split * s_os + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=in_q[:, None])
    tl.store(LSE + split * s_ls + b * s_lb + h * s_lh + offs_m, lse, mask=in_q)


@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_lb,
    s_lh,
    H,
    Tq,
    Tkv,
    q_offset,
    qk_scale,
    sm_scale,
    p_cnt,
    p_idx,
    f_cnt,
    f_idx,
    s_cb,
    s_cr,
    s_ib,
    s_ir,
    ids_ptr,
    dense_ptr,
    s_db,
    s_dq,
    s_dk,
    prefix,
    KIND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """dQ for one query block: dS = P * (dP - delta), dQ = dS K * scale (q, dO, dQ share strides)."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    mask_b = b if s_cb != 0 else 0
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < Tq
    row_ptr = b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :]
    q = tl.load(Q + row_ptr, mask=in_q[:, None], other=0.0)
    do = tl.load(DO + row_ptr, mask=in_q[:, None], other=0.0)
    lse = tl.load(LSE + b * s_lb + h * s_lh + offs_m, mask=in_q, other=float("inf"))
    delta = tl.load(DELTA + b * s_lb + h * s_lh + offs_m, mask=in_q, other=0.0)
    k_base, v_base = K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    q_rows = tl.minimum(offs_m, Tq - 1)
    count_at, index_at = mask_b * s_cb + pid_m * s_cr, mask_b * s_ib + pid_m * s_ir
    n_partial = tl.load(p_cnt + count_at)
    for j in range(0, n_partial + tl.load(f_cnt + count_at)):
        start_n = _tile(j, n_partial, p_idx, f_idx, index_at) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_kv = offs_n < Tkv
        k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :], mask=in_kv[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=in_kv[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if j < n_partial:
            kv_safe = tl.where(in_kv, offs_n, 0)
            ok = _allowed(
                (q_rows + q_offset)[:, None],
                kv_safe[None, :],
                q_rows[:, None],
                mask_b,
                ids_ptr,
                dense_ptr,
                s_db,
                s_dq,
                s_dk,
                prefix,
                KIND,
            )
            s = tl.where(ok & in_kv[None, :], s, float("-inf"))
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + row_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), mask=in_q[:, None])


@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_lb,
    s_lh,
    H,
    Tq,
    Tkv,
    q_offset,
    qk_scale,
    sm_scale,
    p_cnt,
    p_idx,
    f_cnt,
    f_idx,
    s_cb,
    s_cr,
    s_ib,
    s_ir,
    ids_ptr,
    dense_ptr,
    s_db,
    s_dq,
    s_dk,
    prefix,
    KIND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """dK and dV for one KV block, walking the query blocks that see it (dK/dV share K's strides)."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    mask_b = b if s_cb != 0 else 0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_kv = offs_n < Tkv
    k_ptr = b * s_kb + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :]
    k = tl.load(K + k_ptr, mask=in_kv[:, None], other=0.0)
    v = tl.load(
        V + b * s_vb + h * s_vh + offs_n[:, None] * s_vt + offs_d[None, :], mask=in_kv[:, None], other=0.0
    )
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    kv_safe = tl.where(in_kv, offs_n, 0)
    count_at, index_at = mask_b * s_cb + pid_n * s_cr, mask_b * s_ib + pid_n * s_ir
    n_partial = tl.load(p_cnt + count_at)
    for j in range(0, n_partial + tl.load(f_cnt + count_at)):
        start_m = _tile(j, n_partial, p_idx, f_idx, index_at) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < Tq
        row_ptr = b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :]
        q = tl.load(Q + row_ptr, mask=in_q[:, None], other=0.0)
        do = tl.load(DO + row_ptr, mask=in_q[:, None], other=0.0)
        lse = tl.load(LSE + b * s_lb + h * s_lh + offs_m, mask=in_q, other=float("inf"))
        delta = tl.load(DELTA + b * s_lb + h * s_lh + offs_m, mask=in_q, other=0.0)
        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BN, BM): scores transposed
        if j < n_partial:
            q_rows = tl.minimum(offs_m, Tq - 1)
            ok = _allowed(
                (q_rows + q_offset)[None, :],
                kv_safe[:, None],
                q_rows[None, :],
                mask_b,
                ids_ptr,
                dense_ptr,
                s_db,
                s_dq,
                s_dk,
                prefix,
                KIND,
            )
            s_t = tl.where(ok & in_kv[:, None], s_t, float("-inf"))
        p_t = tl.math.exp2(s_t - lse[None, :])  # rows past the end have lse = +inf: P = 0
        dv += tl.dot(p_t.to(do.dtype), do)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    tl.store(DK + k_ptr, (dk * sm_scale).to(DK.dtype.element_ty), mask=in_kv[:, None])
    tl.store(DV + k_ptr, dv.to(DV.dtype.element_ty), mask=in_kv[:, None])


def _mask_args(plan: AttentionPlan, lists, device) -> tuple:
    """Block lists, their strides (batch stride 0 when shared), and the in-kernel mask's tensors."""
    s_cb = lists.partial_count.stride(0) if plan.batched else 0
    s_ib = lists.partial_index.stride(0) if plan.batched else 0
    dummy = torch.zeros(1, dtype=torch.int32, device=device)
    ids = plan.ids if plan.ids is not None else dummy
    dense = plan.dense if plan.dense is not None else dummy
    s_db = dense.stride(0) if plan.dense is not None and plan.batched else 0
    s_dq, s_dk = (dense.stride(1), dense.stride(2)) if plan.dense is not None else (0, 0)
    counts, indices = lists.partial_count, lists.partial_index
    lists_args = (counts, indices, lists.full_count, lists.full_index)
    return (
        *lists_args,
        s_cb,
        counts.stride(1),
        s_ib,
        indices.stride(1),
        ids,
        dense,
        s_db,
        s_dq,
        s_dk,
        plan.prefix,
    )


def forward(q, k, v, plan: AttentionPlan, q_offset: int, splits: int = 1):
    """Returns out [B, H, Tq, D] (q.dtype) and the base-2 log-sum-exp [B, H, Tq] (fp32, -inf if no key)."""
    b, h, tq, d = q.shape
    tkv = k.shape[2]
    rows = triton.cdiv(tq, plan.block_m)
    if splits == 1:
        out = torch.empty_like(q)
        lse = torch.empty(b, h, tq, device=q.device, dtype=torch.float32)
        o_split, l_split = out[None], lse[None]
    else:  # split-KV decode: partial results per split, merged below
        o_split = torch.empty(splits, b, h, tq, d, device=q.device, dtype=torch.float32)
        l_split = torch.empty(splits, b, h, tq, device=q.device, dtype=torch.float32)
    _fwd_kernel[(rows, b * h, splits)](
        q, k, v, o_split, l_split, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *o_split.stride()[:4], *l_split.stride()[:3], h, tq, tkv, q_offset, LOG2E / math.sqrt(d),
        *_mask_args(plan, plan.forward, q.device),
        KIND=plan.kind, SPLITS=splits, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, HEAD_DIM=d,
    )  # fmt: skip
    if splits == 1:
        return out, lse
    top = l_split.amax(0)  # (B, H, Tq)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weight = torch.exp2(l_split - top)  # (S, B, H, Tq); 0 for splits that saw no key
    total = weight.sum(0)
    out = (weight[..., None] * o_split).sum(0) / total.clamp_min(1e-30)[..., None]
    lse = torch.where(total > 0, top + torch.log2(total.clamp_min(1e-30)), float("-inf"))
    return out.to(q.dtype), lse


def backward(do, q, k, v, out, lse, plan: AttentionPlan, q_offset: int):
    b, h, tq, d = q.shape
    tkv = k.shape[2]
    delta = (do.float() * out.float()).sum(-1).contiguous()  # (B, H, Tq): rowsum(dO * O)
    lse = lse.masked_fill(lse == float("-inf"), float("inf")).contiguous()  # rows with no key: P = 0
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = (q, k, v, do, lse, delta)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *lse.stride()[:2])
    scalars = (h, tq, tkv, q_offset, LOG2E / math.sqrt(d), 1.0 / math.sqrt(d))
    meta = dict(KIND=plan.kind, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, HEAD_DIM=d)
    _dq_kernel[(triton.cdiv(tq, plan.block_m), b * h)](
        *args, dq, *strides, *scalars, *_mask_args(plan, plan.forward, q.device), **meta
    )
    _dkdv_kernel[(triton.cdiv(tkv, plan.block_n), b * h)](
        *args, dk, dv, *strides, *scalars, *_mask_args(plan, plan.backward, q.device), **meta
    )
    return dq, dk, dv
