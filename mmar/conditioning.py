"""Conditions for generation: class labels with a learned null class for classifier-free guidance.

During training each label is replaced by the null class with probability `dropout` (0.1 in LlamaGen
and most class-conditional AR work), so the same network learns the conditional and unconditional
model. For sampling with guidance the batch is `cat([cond, null])`, as in LlamaGen.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.errors import ConfigError


class ClassCondition(nn.Module):
    """Class embedding with an extra null class (id `num_classes`), as `n_tokens` prefix tokens."""

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.1, n_tokens: int = 1):
        super().__init__()
        self.num_classes, self.dropout, self.n_tokens = num_classes, dropout, n_tokens
        self.embed = nn.Embedding(num_classes + 1, n_tokens * dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [B] -> condition tokens [B, n_tokens, D]; applies class dropout in training mode."""
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ConfigError(
                f"class labels must lie in [0, {self.num_classes}) (or {self.null_id} for null); got "
                f"min {labels.min().item()}, max {labels.max().item()}: set num_classes to match the data"
            )
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_id), labels)
        return self.embed(labels).unflatten(-1, (self.n_tokens, -1))

    def for_sampling(self, labels: torch.Tensor, guided: bool) -> torch.Tensor:
        """Condition tokens for generation: [B, n, D], or the CFG batch cat([cond, null]) [2B, n, D]."""
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.null_id)])
        return self.embed(labels).unflatten(-1, (self.n_tokens, -1))
