"""Categorical head: hidden states -> logits over a token vocabulary, trained with cross-entropy.

The loss goes through `mmar.kernels.linear_cross_entropy`, which never keeps the full [N, V] logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.kernels import linear_cross_entropy


class CategoricalHead(nn.Module):
    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V] (used at sampling time, a few positions at once)."""
        return self.proj(hidden)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy of hidden [..., D] against targets [...]."""
        return linear_cross_entropy(hidden, self.proj.weight, targets, ignore_index=ignore_index)
