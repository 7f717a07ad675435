"""Categorical token head: the input embedding and the output distribution of one discrete token.

A token head pairs how a unit reads a token (`embed`) with how it predicts one (`loss`, `sample`), so
a unit works unchanged for any discrete token type: one id per position here, a vector of per-channel
ids for the channel-AR head. The loss goes through `mmar.kernels.linear_cross_entropy`, which never
keeps the full [N, V] logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.kernels import linear_cross_entropy
from mmar.sampling import Sampler


class CategoricalHead(nn.Module):
    """One id in [0, vocab_size) per position: an embedding table in, a linear softmax out."""

    token_shape: tuple[int, ...] = ()  # ids per position beyond the grid

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.proj = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids [...] -> embeddings [..., D]."""
        return self.embedding(tokens)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V] (used at sampling time, a few positions at once)."""
        return self.proj(hidden)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy of hidden [..., D] against ids [...]."""
        return linear_cross_entropy(hidden, self.proj.weight, targets, ignore_index=ignore_index)

    def sample(
        self,
        hidden: torch.Tensor,
        sampler: Sampler,
        progress: float | torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """hidden [B, D] (or the CFG batch [2B, D], cond first), the guidance's progress (one, or per row
        [B]) -> ids [B]."""
        return sampler.pick(self(hidden), progress, generator)
