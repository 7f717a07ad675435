"""The shared transformer trunk: a Llama-style decoder used by every prediction unit.

RMSNorm, SwiGLU, multi-axis RoPE (1D text, 2D image (row, col), 3D video (t, row, col)), optional
QK-norm and optional AdaLN conditioning (DiT's adaLN-Zero), and a static KV cache for decoding
(LlamaGen, Sun et al. 2024). The trunk knows nothing about orders, blocks or heads: a unit hands it
embeddings, positions and a mask object; all attention goes through `mmar.kernels.attention`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError
from mmar.kernels import KeyPadding, Mask, attention


@dataclass(frozen=True)
class TrunkConfig:
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads; d_model must be divisible by it."""
    d_model: int = 64
    """Width of the residual stream."""
    ffn_multiple_of: int = 64
    """SwiGLU hidden size is 8/3 * d_model rounded up to a multiple of this."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before RoPE (stabilises large models)."""
    adaln: bool = False
    """Condition every block on a vector via adaLN-Zero shift/scale/gate instead of prefix tokens only."""
    rope_base: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    dropout: float = 0.0
    """Residual and attention-output dropout."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


TRUNK_PRESETS: dict[str, TrunkConfig] = {
    "debug": TrunkConfig(n_layer=2, n_head=4, d_model=64),
    "S": TrunkConfig(n_layer=12, n_head=8, d_model=512),
    "B": TrunkConfig(n_layer=12, n_head=12, d_model=768),  # LlamaGen GPT-B (111M with its embeddings)
    "L": TrunkConfig(n_layer=24, n_head=16, d_model=1024),  # LlamaGen GPT-L
}


def trunk_config(preset: str = "debug", **overrides) -> TrunkConfig:
    """A named preset with optional field overrides, e.g. `trunk_config("S", n_layer=6)`."""
    if preset not in TRUNK_PRESETS:
        raise ConfigError(f"unknown trunk preset '{preset}'; choose one of {sorted(TRUNK_PRESETS)}")
    fields = set(asdict(TRUNK_PRESETS[preset]))
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown trunk field(s) {sorted(unknown)}; TrunkConfig has {sorted(fields)}")
    config = replace(TRUNK_PRESETS[preset], **overrides)
    if config.d_model % config.n_head or config.head_dim % 2:
        raise ConfigError(f"d_model={config.d_model} must split into {config.n_head} heads of even size")
    return config


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles for multi-axis RoPE. positions [..., T, A] -> angles [..., T, head_dim // 2].

    The head_dim/2 rotation pairs are split evenly across the A axes (as LlamaGen's 2D RoPE splits
    them between rows and columns); each axis uses the 1D frequency ladder over its share. Pairs left
    over when A does not divide head_dim/2 get angle 0. A position of all zeros (the condition
    tokens) is the identity rotation.
    """
    n_axes = positions.shape[-1]
    pairs = head_dim // 2 // n_axes
    freqs = base ** (-torch.arange(pairs, device=positions.device, dtype=torch.float32) / pairs)  # (P,)
    angles = positions.float()[..., None] * freqs  # (..., T, A, P)
    angles = angles.flatten(-2)  # (..., T, A * P)
    return F.pad(angles, (0, head_dim // 2 - angles.shape[-1]))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, H, ..., T, D] by angles given as cos/sin [B or 1, 1, ..., T, D/2]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, T, D/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Static key/value buffers [B, H, max_len, Dh] per layer; `length` is the number of filled slots."""

    def __init__(self, config: TrunkConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, config.n_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H, T, Dh] after the filled part; return all filled keys/values of the layer."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` filled slots (speculative decoding drops rejected drafts): the
        slots after them are never read again and the next `update` overwrites them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} filled slots to {length}")
        self.length = length


class Attention(nn.Module):
    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None

    def forward(self, x, cos, sin, mask: Mask | None, cache: KVCache | None, layer: int):
        qkv = self.qkv(x).unflatten(-1, (3, self.n_head, self.head_dim)).transpose(1, 3)  # (B, H, 3, T, Dh)
        q, k, v = qkv.unbind(2)
        qk = qkv[:, :, :2] if self.q_norm is None else torch.stack([self.q_norm(q), self.k_norm(k)], dim=2)
        # one rotation of q and k together: a decode step is a few hundred tiny ops, each paid in overhead
        q, k = apply_rope(qk, cos[..., None, :, :], sin[..., None, :, :]).unbind(2)  # (B, H, T, Dh) each
        q_offset = 0
        if cache is not None:
            q_offset = cache.length
            k, v = cache.update(layer, k, v)  # (B, H, Tkv, Dh)
        out = attention(q, k, v, mask, q_offset=q_offset)  # (B, H, T, Dh)
        return self.proj(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, config: TrunkConfig):
        super().__init__()
        m = config.ffn_multiple_of
        hidden = (int(8 * config.d_model / 3) + m - 1) // m * m
        self.w_gate_up = nn.Linear(config.d_model, 2 * hidden, bias=False)
        self.w_down = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: TrunkConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.ffn = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)
        # adaLN-Zero: shift/scale/gate for both sub-blocks (zero-initialised by the Trunk)
        self.ada = nn.Linear(config.d_model, 6 * config.d_model) if config.adaln else None

    def forward(self, x, cos, sin, mask, cache, cond):
        if self.ada is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, cache, self.layer))
            return x + self.drop(self.ffn(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.drop(self.attn(h, cos, sin, mask, cache, self.layer))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.drop(self.ffn(h))


class Trunk(nn.Module):
    """Decoder stack. `forward(x, positions, mask, cond, cache) -> hidden`, all shapes [B, T, D]."""

    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.final_ada = nn.Linear(config.d_model, 2 * config.d_model) if config.adaln else None
        self.decode_step = None  # set by compile_decode
        self.apply(_init_weights)
        for ada in [block.ada for block in self.blocks] + [self.final_ada]:
            if ada is not None:  # adaLN-Zero: every block starts as the identity
                nn.init.zeros_(ada.weight)
                nn.init.zeros_(ada.bias)

    def make_cache(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> KVCache:
        if self.decode_step is not None:  # the compiled step keeps its buffers from call to call
            return self.decode_step.cache(batch, max_len, device, dtype)
        return KVCache(self.config, batch, max_len, device=device, dtype=dtype)

    def with_prefix_padding(self, valid: torch.Tensor | None) -> Trunk | PrefixPadded:
        """This trunk with the padded keys of the condition prefix hidden on every call: `valid` [B, n]
        marks the real condition tokens at the start of each sequence (None or all True: the trunk itself,
        so unpadded conditions cost nothing)."""
        return self if valid is None or bool(valid.all()) else PrefixPadded(self, valid)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: Mask | None = None,
        cond: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Run the stack.

        Args:
            x: input embeddings [B, T, D].
            positions: grid coordinates [T, A] or [B, T, A] (A = 1, 2 or 3 axes); zeros = no rotation.
            mask: attention mask object over absolute positions (None = bidirectional).
            cond: [B, D] conditioning vector, required when the trunk uses AdaLN.
            cache: KV cache; x is placed after `cache.length` filled positions, which then advances.

        Returns:
            hidden states [B, T, D] after the final norm.
        """
        if self.config.adaln and cond is None:
            raise ValueError("this trunk uses AdaLN (adaln=True) and needs a cond vector [B, D]")
        if positions.shape[-2] != x.shape[1]:
            raise ValueError(f"positions {tuple(positions.shape)} do not match {x.shape[1]} inputs")
        if cache is not None and x.shape[1] == 1 and self.decode_step is not None:
            return self.decode_step(x, positions, mask, cond, cache)  # compiled, static shapes
        x = self.run(x, positions, mask, cond, cache)
        if cache is not None:
            cache.length += x.shape[1]
        return x

    def compile_decode(self, **compile_kwargs) -> Trunk:
        """Run every one-token cached pass (a decode step) through `torch.compile` with static shapes
        (`mmar.decode_step`); `compile_kwargs` go to torch.compile, e.g. mode="reduce-overhead" for CUDA
        graphs on GPU. Other passes stay eager. Returns the trunk."""
        from mmar.decode_step import StaticDecodeStep

        self.decode_step = StaticDecodeStep(self, **compile_kwargs)
        return self

    def run(self, x, positions, mask, cond, cache) -> torch.Tensor:
        """The stack without the checks and without advancing the cache: x [B, T, D] -> hidden [B, T, D]."""
        angles = rope_angles(positions, self.config.head_dim, self.config.rope_base)  # (B?, T, Dh/2)
        cos, sin = angles.cos().unsqueeze(-3), angles.sin().unsqueeze(-3)  # broadcast over heads
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache, cond)
        x = self.norm(x)
        if self.final_ada is not None:
            shift, scale = self.final_ada(F.silu(cond))[:, None].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x


class PrefixPadded:
    """A trunk whose every call adds the key padding of the condition prefix to the unit's mask
    (`KeyPadding(mask, valid)`), so units run text (padded) and class conditions with the same code.

    A call on half the rows of `valid` reads its first half: the conditional half of the CFG batch
    `cat([cond, null])`, which a unit decodes alone where guidance is off (Hi-MAR's unguided pivots)."""

    def __init__(self, trunk: Trunk, valid: torch.Tensor):
        self.trunk, self.valid = trunk, valid.bool()  # (B, n)

    def __getattr__(self, name: str):
        return getattr(self.trunk, name)  # config, make_cache, ...

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, mask: Mask | None = None, **kwargs):
        valid, rows = self.valid, x.shape[0]
        if rows != len(valid):
            if 2 * rows != len(valid):
                raise ValueError(f"a batch of {rows} rows cannot read the key padding of {len(valid)} rows")
            valid = valid[:rows]
        return self.trunk(x, positions, KeyPadding(mask, valid.to(x.device)), **kwargs)


class AdaLNConditioned:
    """A trunk (plain or `PrefixPadded`) whose every call reads the adaLN-Zero condition vector `cond`
    [B, D] (DiT: the class embedding or a pooled text vector), so units run adaln trunks unchanged.

    A call on half the rows reads the first half, the conditional half of the CFG batch `cat([cond, null])`,
    as `PrefixPadded` does."""

    def __init__(self, trunk: Trunk | PrefixPadded, cond: torch.Tensor):
        self.trunk, self.cond = trunk, cond  # (B, D)

    def __getattr__(self, name: str):
        return getattr(self.trunk, name)  # config, make_cache, ...

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, mask: Mask | None = None, **kwargs):
        cond, rows = self.cond, x.shape[0]
        if rows != len(cond):
            if 2 * rows != len(cond):
                raise ValueError(
                    f"a batch of {rows} rows cannot read the adaLN condition of {len(cond)} rows"
                )
            cond = cond[:rows]
        return self.trunk(x, positions, mask, cond=cond.to(x.device), **kwargs)


class PassCounter:
    """Counts a trunk's forward passes while in a `with` block (its final norm runs once a pass):
    what sampling really costs, measured rather than predicted by a unit's `num_steps`."""

    def __init__(self, trunk: Trunk):
        self.trunk, self.count, self.handle = trunk, 0, None

    def __enter__(self) -> PassCounter:
        self.handle = self.trunk.norm.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _hook(self, *_) -> None:
        self.count += 1


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
