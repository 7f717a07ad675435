"""Attention masks as small objects instead of dense tensors.

A mask is a predicate `allowed(q_idx, kv_idx)` over absolute sequence positions, in the spirit of
FlexAttention's `mask_mod`. Keeping the definition symbolic lets the attention dispatcher turn it into
whatever a backend wants: an SDPA bool mask (torch reference), a FlexAttention BlockMask, or the
per-block lists of the Triton kernel. `q_offset` places a query chunk inside the sequence, which is how
KV-cached decoding reuses the same mask as the full forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Mask:
    """Base class: subclasses implement `allowed`, a broadcasting predicate on index tensors."""

    is_causal = False  # True when the mask equals the plain causal mask (lets SDPA use its fast path)

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense(self, q_len: int, kv_len: int, q_offset: int = 0, device=None) -> torch.Tensor:
        """Bool mask [..., q_len, kv_len], True where attention is allowed."""
        q_idx = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]  # (Tq, 1)
        kv_idx = torch.arange(kv_len, device=device)[None, :]  # (1, Tkv)
        return self.allowed(q_idx, kv_idx)


@dataclass(frozen=True)
class Causal(Mask):
    """Each position attends to itself and everything before it."""

    is_causal = True

    def allowed(self, q_idx, kv_idx):
        return kv_idx <= q_idx


@dataclass(frozen=True)
class Prefix(Mask):
    """The first `n` positions attend to each other bidirectionally; the rest is causal."""

    n: int

    def allowed(self, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < self.n)


@dataclass(frozen=True, eq=False)
class BlockCausal(Mask):
    """Bidirectional inside a block, causal across blocks: position q attends to kv iff block_ids[kv] <=
    block_ids[q]. `block_ids` [T] are ints, non-decreasing for block-causal orders (not for `proximity`)."""

    block_ids: torch.Tensor

    def allowed(self, q_idx, kv_idx):
        ids = self.block_ids.to(q_idx.device)
        return ids[kv_idx] <= ids[q_idx]


@dataclass(frozen=True, eq=False)
class Dense(Mask):
    """An explicit bool mask [..., T, T] over absolute positions (True = attend)."""

    mask: torch.Tensor

    def allowed(self, q_idx, kv_idx):
        m = self.mask.to(q_idx.device)
        return m[..., q_idx, kv_idx]


@dataclass(frozen=True, eq=False)
class KeyPadding(Mask):
    """`base` (None = bidirectional) with padded keys of a condition prefix hidden: the first
    `valid.shape[1]` positions of sample b are keys only where `valid[b]` [n] is True, so a padded caption
    never leaks into attention. The mask is per sample: [B, Tq, Tkv]."""

    base: Mask | None
    valid: torch.Tensor  # (B, n) bool

    def allowed(self, q_idx, kv_idx):
        valid = self.valid.to(q_idx.device)
        n = valid.shape[1]
        keys = (kv_idx >= n) | valid[:, kv_idx.clamp(max=n - 1)]  # (B, 1, Tkv)
        base = q_idx >= 0 if self.base is None else self.base.allowed(q_idx, kv_idx)  # (B?, Tq, Tkv)
        return base & keys


def proximity(grid: tuple[int, ...], n_prefix: int = 0) -> BlockCausal:
    """NAR's proximity mask over `[prefix, raster tokens of grid]`: token p attends to token p' iff
    sum(p') <= sum(p) (h' + w' <= h + w; t' + h' + w' <= t + h + w for video); the prefix is causal."""
    axes = [torch.arange(n) for n in grid]
    levels = torch.stack(torch.meshgrid(*axes, indexing="ij")).sum(0).flatten()  # (N,) diagonal index
    return BlockCausal(torch.cat([torch.arange(-n_prefix, 0), levels]))
