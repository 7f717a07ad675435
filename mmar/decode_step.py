"""A KV-cached decode step of static shapes, for torch.compile and CUDA graphs (LlamaGen's static cache).

The eager step slices the cache to its filled length, so each step has new shapes: compiled, that is a
recompile (or a CUDA-graph re-record) per token. Here the one new query attends to the whole
preallocated buffer [B, H, max_len, Dh] under a key mask (the unit's mask at the step's position, and
only the filled slots), and K, V are written at a slot given as a tensor, so every step of a generate
call has the same shapes and torch.compile builds one graph for all of them; with
mode="reduce-overhead" on CUDA it is replayed as one CUDA graph. The buffers are kept from call to call
(`cache`), which CUDA graphs need (they replay fixed addresses). Enable it with `Trunk.compile_decode`.
"""

from __future__ import annotations

import torch

from mmar.kernels import Dense, Mask


class SlotCache:
    """What the trunk's layers see of a KVCache during a static step: K, V written at `slot` [1], and
    every slot read back; the query sits at position 0 of the key mask, which holds the real position."""

    length = 0

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slot: torch.Tensor):
        self.keys, self.values, self.slot = keys, values, slot

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer].index_copy_(2, self.slot, k)  # (B, H, max_len, Dh)
        self.values[layer].index_copy_(2, self.slot, v)
        return self.keys[layer], self.values[layer]


class StaticDecodeStep:
    """A trunk's compiled one-token pass over its persistent KV buffers (see the module docstring)."""

    def __init__(self, trunk, **compile_kwargs):
        self.trunk = trunk
        self.caches = {}  # (batch, max_len, device, dtype) -> KVCache, reused by every generate call
        self.compiled = torch.compile(self._step, **compile_kwargs)

    def cache(self, batch: int, max_len: int, device, dtype):
        """An empty KVCache over this step's buffers of that size (allocated on first use)."""
        from mmar.trunk import KVCache

        key = (batch, max_len, str(torch.device(device or "cpu")), dtype)
        if key not in self.caches:
            cache = KVCache(self.trunk.config, batch, max_len, device=device, dtype=dtype)
            if torch.device(device or "cpu").type == "cuda":  # CUDA graphs may then update them in place
                for buffer in cache.k + cache.v:
                    torch._dynamo.mark_static_address(buffer)
            self.caches[key] = cache
        cache = self.caches[key]
        cache.length = 0  # slots past the length are masked until written, so no zeroing is needed
        return cache

    def _step(self, x, positions, keys, cond, k_buffers, v_buffers, slot):
        return self.trunk.run(x, positions, Dense(keys), cond, SlotCache(k_buffers, v_buffers, slot))

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, mask: Mask | None, cond, cache):
        """One pass of x [B, 1, D] at position `cache.length` -> hidden [B, 1, D]; the cache advances."""
        length, device = cache.length, x.device
        if length >= cache.max_len:
            raise ValueError(f"KV cache overflow: {length + 1} positions > max_len {cache.max_len}")
        filled = torch.arange(cache.max_len, device=device)[None] <= length  # (1, max_len)
        keys = filled if mask is None else mask.dense(1, cache.max_len, length, device=device) & filled
        slot = torch.tensor([length], device=device)
        hidden = self.compiled(x, positions, keys, cond, cache.k, cache.v, slot)  # keys (B?, 1, max_len)
        cache.length += 1
        return hidden
