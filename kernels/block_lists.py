"""From a mask object to what the Triton attention kernel reads: an in-kernel mask kind and, per query
block, the lists of KV blocks to visit (FlexAttention's BlockMask idea).

A (query block, KV block) tile is *empty* (skipped), *full* (every pair allowed: no mask work) or
*partial* (the kernel evaluates the mask element-wise). A KV tile that runs past the end of the keys is
always partial, so the kernel's bounds check lives in one place. Rows past the end of the queries are
never written: they neither make an empty tile visited nor a full tile partial.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from mmar.kernels.masks import BlockCausal, Causal, Dense, Mask, Prefix

# In-kernel mask kinds (constexpr of the kernel).
KIND_NONE, KIND_CAUSAL, KIND_PREFIX, KIND_IDS, KIND_DENSE = range(5)


@dataclass
class BlockLists:
    """Per (mask batch, row block): how many partial / full column blocks, and which, ascending.

    counts [Bm, R] int32, indices [Bm, R, C] int32 (the first `count` entries are meaningful)."""

    partial_count: torch.Tensor
    partial_index: torch.Tensor
    full_count: torch.Tensor
    full_index: torch.Tensor


def _lists(partial: torch.Tensor, full: torch.Tensor) -> BlockLists:
    """partial/full bool [Bm, R, C] -> lists of the column blocks of each kind, ascending."""

    def one(flags):
        order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True)  # flagged first, in order
        return flags.sum(-1, dtype=torch.int32).contiguous(), order.to(torch.int32).contiguous()

    return BlockLists(*one(partial), *one(full))


@dataclass
class AttentionPlan:
    """Everything the kernels need about the mask for one (Tq, Tkv, q_offset, block sizes)."""

    kind: int
    block_m: int
    block_n: int
    forward: BlockLists  # rows = query blocks, columns = KV blocks
    backward: BlockLists  # rows = KV blocks, columns = query blocks (for dK / dV)
    ids: torch.Tensor | None = None  # KIND_IDS: int32 block id per absolute position
    dense: torch.Tensor | None = None  # KIND_DENSE: int8 [Bm, Tq, Tkv], rows relative to q_offset
    prefix: int = 0  # KIND_PREFIX: length of the bidirectional prefix
    batched: bool = field(default=False)  # lists and dense mask differ per batch element


def _kind(mask: Mask | None) -> int:
    if mask is None:
        return KIND_NONE
    if isinstance(mask, Causal):
        return KIND_CAUSAL
    if isinstance(mask, Prefix):
        return KIND_PREFIX
    if isinstance(mask, BlockCausal):
        return KIND_IDS
    return KIND_DENSE  # Dense and any other predicate: materialised once per plan


def _tensor_of(mask: Mask | None) -> torch.Tensor | None:
    if isinstance(mask, BlockCausal):
        return mask.block_ids
    if isinstance(mask, Dense):
        return mask.mask
    return None


def build_plan(
    mask: Mask | None, tq: int, tkv: int, q_offset: int, block_m: int, block_n: int, device
) -> AttentionPlan:
    """Classify every tile of the [Tq, Tkv] attention matrix and list the tiles each block visits."""
    tensor = _tensor_of(mask)
    if tensor is not None and tensor.device != torch.device(device):
        raise ValueError(
            f"the attention mask's tensor is on {tensor.device} but the queries are on {device}; "
            f"build the mask on the queries' device (e.g. BlockCausal(ids.to(q.device)))"
        )
    if mask is None:
        allowed = torch.ones(1, tq, tkv, dtype=torch.bool, device=device)
    else:
        allowed = mask.dense(tq, tkv, q_offset, device=device)
        if allowed.ndim == 2:
            allowed = allowed[None]
        if allowed.ndim != 3:
            raise ValueError(
                f"attention masks must be [Tq, Tkv] or per-sample [B, Tq, Tkv]; got {tuple(allowed.shape)}"
            )
    bm = allowed.shape[0]
    rows, cols = -(-tq // block_m), -(-tkv // block_n)
    padded = torch.zeros(bm, rows * block_m, cols * block_n, dtype=torch.bool, device=device)
    padded[:, :tq, :tkv] = allowed
    any_ = padded.view(bm, rows, block_m, cols, block_n).any(dim=(2, 4))  # (Bm, R, C)
    padded[:, tq:, :tkv] = True  # rows past the end do not stop a tile from being full
    all_ = padded.view(bm, rows, block_m, cols, block_n).all(dim=(2, 4))
    partial, full = any_ & ~all_, all_ & any_
    kind = _kind(mask)
    return AttentionPlan(
        kind=kind,
        block_m=block_m,
        block_n=block_n,
        forward=_lists(partial, full),
        backward=_lists(partial.transpose(1, 2), full.transpose(1, 2)),
        ids=tensor.to(torch.int32).contiguous() if kind == KIND_IDS else None,
        dense=allowed.to(torch.int8).contiguous() if kind == KIND_DENSE else None,
        prefix=mask.n if kind == KIND_PREFIX else 0,
        batched=bm > 1,
    )


# Every trunk layer calls attention with the same mask object; build its plan once per shape.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UNMASKED_PLANS: dict = {}


def cached_plan(mask, tq, tkv, q_offset, block_m, block_n, device) -> AttentionPlan:
    key = (tq, tkv, q_offset, block_m, block_n, str(device))
    store = _UNMASKED_PLANS if mask is None else _PLANS.setdefault(mask, {})
    if key not in store:
        if len(store) > 64:  # decoding walks through many offsets; keep the cache small
            store.clear()
        store[key] = build_plan(mask, tq, tkv, q_offset, block_m, block_n, device)
    return store[key]
