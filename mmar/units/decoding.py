"""The one KV-cached decoding loop of the units that emit tokens pass by pass: next_token (and RAR's
random_order), next_block and next_neighbor.

Every such unit decodes the same way (LlamaGen's static-cache loop): the first pass reads the condition
(and any given prefix), each pass emits some tokens, and those tokens, fed to both halves of the CFG
batch `cat([cond, null])`, are the next pass's only input while the cache holds everything before them.
Without the cache each pass re-reads the whole sequence (the check that cached decoding equals the full
forward). What differs between units is passed in: where the inputs sit (`positions`, `mask`), and
`emit`, which turns a pass's hidden states into its tokens (which positions predict, how the head picks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmar.kernels import Mask
from mmar.sampling import Sampler
from mmar.trunk import Trunk


def kv_decode(
    trunk: Trunk,
    first: torch.Tensor,
    positions: torch.Tensor,
    mask: Mask,
    steps: Sequence[int],
    emit: Callable[[int, torch.Tensor], torch.Tensor],
    embed: Callable[[torch.Tensor], torch.Tensor],
    sampler: Sampler,
    use_cache: bool = True,
    prepare: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Run one trunk pass per step and feed each pass's tokens back.

    Args:
        trunk: the trunk (possibly `PrefixPadded` or condition-wrapped); its cache is made here.
        first: the first pass's inputs [B', T0, D] (B' = 2B under CFG): the condition, any prefix.
        positions: RoPE coordinates [L, A] of every input the loop feeds, in order; L sizes the cache.
        mask: the attention mask over those L positions.
        steps: the step indices, passed to `emit` (e.g. range(given, n)).
        emit: (step, hidden [B', T, D] of the pass) -> the pass's tokens [B, T', *token_shape].
        embed: tokens [B', T', *token_shape] -> embeddings [B', T', D] (the unit's head).
        sampler: its `cfg_batch` doubles the tokens for the CFG batch.
        use_cache: a static KV cache (True) or a full forward over the growing sequence per pass.
        prepare: (inputs [B', T, D], index of the first) -> inputs, applied before each pass (RAR's
            target-aware position embedding); None leaves them unchanged.

    Returns:
        the tokens each step emitted, in order.
    """
    cache = trunk.make_cache(first.shape[0], len(positions), first.device, first.dtype) if use_cache else None
    seq, out = first, []  # seq: what the next trunk pass reads besides the cache
    for i, step in enumerate(steps):
        start = cache.length if cache is not None else 0
        inputs = seq if prepare is None else prepare(seq, start)
        hidden = trunk(inputs, positions[start : start + seq.shape[1]], mask, cache=cache)  # (B', T, D)
        out.append(emit(step, hidden))
        if i == len(steps) - 1:
            break  # the last tokens are never read back
        embedded = embed(sampler.cfg_batch(out[-1]))  # (B', T', D): both CFG halves read the same tokens
        seq = embedded if cache is not None else torch.cat([seq, embedded], dim=1)
    return out
