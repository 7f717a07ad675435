"""Triton fused sampling: one program per row does CFG mix, temperature, top-k, top-p, min-p and a
Gumbel-max draw, in the order of `sample.sample_reference`, without sorting.

Sorting is replaced by exact threshold searches: the kept set of top-k is {logit >= t} for the k-th
largest logit t, and that of top-p is {logit >= t} for the smallest t whose strictly-larger mass is
below p. Both thresholds are found by bisection over the float's order-preserving integer key (33 steps
cover every float32), so the kernel's support equals the sorted reference's exactly. Import this module
only on the Triton path (`TRITON_INTERPRET=1` before triton is first imported, to run it on CPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sample_kernel(
    C,
    U,
    SCALE,
    OUT,
    FILTERED,
    V,
    s_c,
    s_u,
    inv_temp,
    top_k,
    top_p,
    min_p,
    seed,
    HAS_U: tl.constexpr,
    WRITE_FILTERED: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_V)
    valid = cols < V
    x = tl.load(C + row * s_c + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_U:  # classifier-free guidance: u + s (c - u)
        u = tl.load(U + row * s_u + cols, mask=valid, other=0.0).to(tl.float32)
        x = u + tl.load(SCALE + row) * (x - u)
    x = tl.where(valid, x * inv_temp, float("-inf"))
    bits = x.to(tl.int32, bitcast=True)  # order-preserving integer key: flip the magnitude of negatives
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)
    if top_k > 0:  # largest t with #{key >= t} >= k is the k-th largest key
        lo, hi = tl.min(key, 0), tl.max(key, 0)
        for _ in range(33):
            mid = lo + ((hi - lo + 1) >> 1)
            enough = tl.sum((key >= mid).to(tl.int32), 0) >= top_k
            lo, hi = tl.where(enough, mid, lo), tl.where(enough, hi, mid - 1)
        x = tl.where(key >= lo, x, float("-inf"))
        bits = x.to(tl.int32, bitcast=True)
        key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)
    if top_p < 1.0:  # smallest t whose strictly-larger mass is < p: keep every token with key >= t
        p = tl.exp(x - tl.max(x, 0))
        p = p / tl.sum(p, 0)
        lo, hi = tl.min(key, 0), tl.max(key, 0)
        for _ in range(33):
            mid = lo + ((hi - lo) >> 1)
            small = tl.sum(tl.where(key > mid, p, 0.0), 0) < top_p
            lo, hi = tl.where(small, lo, mid + 1), tl.where(small, mid, hi)
        x = tl.where(key >= lo, x, float("-inf"))
    if min_p > 0.0:  # p / p_max = exp(x - max)
        x = tl.where(tl.exp(x - tl.max(x, 0)) >= min_p, x, float("-inf"))
    if WRITE_FILTERED:  # the logits the draw sees (tests compare the support with the reference)
        tl.store(FILTERED + row * V + cols, x, mask=valid)
    # uniform noise from a counter-based hash of (seed, row, column): lowbias32 (C. Wellons), a few
    # integer ops per token where Philox (tl.rand) takes ~100 (and is prohibitively slow interpreted)
    h = (row * V + cols).to(tl.uint32) * 0x9E3779B9 + seed.to(tl.uint32)
    h = (h ^ (h >> 16)) * 0x7FEB352D
    h = (h ^ (h >> 15)) * 0x846CA68B
    h = h ^ (h >> 16)
    uniform = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)  # 24 bits, strictly inside (0, 1)
    noisy = tl.where(x == float("-inf"), float("-inf"), x - tl.log(-tl.log(uniform)))
    tl.store(OUT + row, tl.argmax(noisy, 0).to(tl.int64))


def sample(logits, uncond_logits, cfg_scale, temperature, top_k, top_p, min_p, seed: int, filtered=None):
    """ids [B] for logits [B, V]; temperature > 0 (the caller handles the greedy case). When `filtered`
    (fp32 [B, V]) is given, it receives the mixed, tempered and filtered logits the draw used."""
    rows, vocab = logits.shape
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    has_u = uncond_logits is not None
    if has_u:
        uncond_logits = uncond_logits if uncond_logits.stride(-1) == 1 else uncond_logits.contiguous()
        scale = torch.as_tensor(cfg_scale, dtype=torch.float32, device=logits.device)
        scale = scale.expand(rows).contiguous()  # one guidance scale per row
    else:
        uncond_logits, scale = logits, logits.new_zeros(1, dtype=torch.float32)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    block = triton.next_power_of_2(vocab)
    _sample_kernel[(rows,)](
        logits, uncond_logits, scale, out, out if filtered is None else filtered, vocab,
        logits.stride(0), uncond_logits.stride(0), 1.0 / temperature, top_k if 0 < top_k < vocab else 0,
        top_p, min_p, seed, HAS_U=has_u, WRITE_FILTERED=filtered is not None, BLOCK_V=block,
        num_warps=min(16, max(1, block // 1024)),
    )  # fmt: skip
    return out
