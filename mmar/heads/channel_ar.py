"""Channel-wise autoregressive token head (TokenBridge: Wang et al., 2025, "Bridging Continuous and Discrete
Tokens for Autoregressive Visual Generation").

A TokenBridge token is C ids, one per latent channel, each in [0, L) (L levels per channel, e.g. 64): a
joint softmax over L ** C values is out of reach, so a small causal transformer over the C channels of
one spatial token factorises it, p(t) = prod_k p(t_{o_k} | t_{o_0}, ..., t_{o_{k-1}}, h), where h is the
trunk's hidden state for that token and o = `channel_order` (TokenBridge orders channels by frequency
content; the identity by default). The head sequence has one position per channel: position k reads h
(projected, added to every position) plus the embedding of channel o_{k-1}'s id (nothing at k = 0) and
predicts channel o_k. Training uses teacher forcing inside the head; sampling runs it channel by
channel, with classifier-free guidance at every channel step on the stacked [cond, null] logits, and
the same chosen id is fed to both halves.

The trunk reads a token through `embed`: the sum of one embedding per (channel, id).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError
from mmar.kernels import Causal, attention, linear_cross_entropy
from mmar.sampling import Sampler


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention over the channel positions."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm2 = nn.RMSNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, Causal())  # (N, H, T, Dh)
        x = x + self.proj(out.transpose(1, 2).flatten(2))  # (N, T, W)
        return x + self.mlp(self.norm2(x))


class ChannelARHead(nn.Module):
    """C ids per position, predicted one channel at a time by a small causal transformer.

    Args:
        d_model: width of the trunk's hidden states.
        vocab_size: levels per channel L (the tokenizer's `vocab_size`).
        channels: ids per token C (the tokenizer's `token_shape[0]`, its latent channels).
        width: width of the head's transformer.
        depth: number of transformer blocks of the head.
        heads: attention heads of the head (must divide `width`).
        channel_order: the order in which channels are predicted, a permutation of range(channels)
            (default: 0, 1, ..., C - 1).
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        channels: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        channel_order: list[int] | None = None,
    ):
        super().__init__()
        _check_args(channels, width, depth, heads, channel_order)
        order = list(range(channels)) if channel_order is None else [int(c) for c in channel_order]
        self.channels, self.vocab_size = channels, vocab_size
        self.token_shape = (channels,)  # ids per position beyond the grid
        self.register_buffer("order", torch.tensor(order), persistent=False)  # (C,) position -> channel
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)  # channel -> position
        self.embedding = nn.Embedding(channels * vocab_size, d_model)  # trunk input, one table per channel
        self.cond_proj = nn.Linear(d_model, width)
        self.token_embed = nn.Embedding(channels * vocab_size, width)  # head input, one table per channel
        self.pos = nn.Parameter(torch.zeros(channels, width))
        self.blocks = nn.ModuleList(_CausalBlock(width, heads) for _ in range(depth))
        self.norm = nn.RMSNorm(width)
        self.out = nn.Linear(width, vocab_size, bias=False)
        self.apply(_init_weights)
        nn.init.normal_(self.pos, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids [..., C] -> embeddings [..., D]: the sum of the per-channel embeddings."""
        self._check_last_dim(tokens, "tokens")
        offsets = torch.arange(self.channels, device=tokens.device) * self.vocab_size  # (C,)
        return self.embedding(tokens + offsets).sum(-2)  # (..., D)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: hidden [..., D], ids [..., C] -> logits [..., C, V] (channel c at c)."""
        self._check_last_dim(tokens, "tokens")
        features = self._features(hidden.flatten(0, -2), tokens.flatten(0, -2)[:, self.order[:-1]])
        logits = self.out(features)[:, self.inverse]  # (N, C, V) back in channel order
        return logits.unflatten(0, hidden.shape[:-1])

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy over every channel of every position: hidden [..., D], ids [..., C]."""
        self._check_last_dim(targets, "targets")
        ordered = targets.flatten(0, -2)[:, self.order]  # (N, C) in prediction order
        fed = ordered[:, :-1].clamp_min(0)  # ignored targets (-100) still need a valid input id
        features = self._features(hidden.flatten(0, -2), fed)  # (N, C, W)
        return linear_cross_entropy(features, self.out.weight, ordered, ignore_index=ignore_index)

    def sample(
        self,
        hidden: torch.Tensor,
        sampler: Sampler,
        progress: float | torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """hidden [B, D] (or the CFG batch [2B, D], cond first), the guidance's progress (one, or per row
        [B]) -> ids [B, C], channel by channel."""
        fed = hidden.new_zeros(hidden.shape[0], 0, dtype=torch.long)  # (B', k) ids in prediction order
        picked = []
        for _ in range(self.channels):  # step k predicts channel order[k]
            features = self._features(hidden, fed)  # (B', k + 1, W)
            ids = sampler.pick(self.out(features[:, -1]), progress, generator)  # (B,)
            picked.append(ids)
            fed = torch.cat([fed, sampler.cfg_batch(ids)[:, None]], dim=1)  # both CFG halves read the id
        return torch.stack(picked, dim=-1)[:, self.inverse]  # (B, C) back in channel order

    def _features(self, hidden: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """hidden [N, D], ids of the first k channels in prediction order [N, k] -> features [N, k+1, W]."""
        k = fed.shape[1]
        offsets = self.order[:k] * self.vocab_size  # (k,) each channel has its own table
        tokens = self.token_embed(fed + offsets)  # (N, k, W)
        x = F.pad(tokens, (0, 0, 1, 0))  # (N, k + 1, W): position j reads channel o_{j-1}
        x = x + self.cond_proj(hidden)[:, None] + self.pos[: k + 1]  # the token's state at every position
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _check_last_dim(self, ids: torch.Tensor, what: str) -> None:
        if ids.ndim < 1 or ids.shape[-1] != self.channels:
            raise ConfigError(
                f"the channel_ar head expects {what} [..., {self.channels}] (head_kwargs.channels="
                f"{self.channels}), got {tuple(ids.shape)}; set channels to the tokenizer's latent channels"
            )


def _check_args(channels: int, width: int, depth: int, heads: int, channel_order: list[int] | None) -> None:
    """ConfigError naming the head_kwargs field that is wrong."""
    if channels < 1 or depth < 1 or heads < 1 or width < 1:
        raise ConfigError(
            f"head_kwargs channels={channels}, width={width}, depth={depth}, heads={heads} must all be >= 1"
        )
    if width % heads:
        raise ConfigError(f"head_kwargs.width={width} must be divisible by head_kwargs.heads={heads}")
    if channel_order is not None and sorted(int(c) for c in channel_order) != list(range(channels)):
        raise ConfigError(
            f"head_kwargs.channel_order={list(channel_order)} must be a permutation of 0..{channels - 1}"
        )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
