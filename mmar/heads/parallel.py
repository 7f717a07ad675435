"""Parallel categorical head: Q ids per position predicted together (MusicGen's codebook heads).

A position's input is the sum of one embedding per level (each level its own table); its output is Q
independent softmaxes, one linear projection per level, trained with the mean cross-entropy over levels
and sampled independently. Levels see each other only across positions: in the delay pattern
(`mmar.code_patterns`) level q of a frame is predicted one step after level q - 1 of the same frame.

Id `mmar.code_patterns.EMPTY` (-1) marks a cell with no code (the delay pattern's corners): it is
embedded by a learned empty row of its level, ignored as a target, and never sampled.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.code_patterns import EMPTY
from mmar.errors import ConfigError
from mmar.kernels import linear_cross_entropy
from mmar.sampling import Sampler


class ParallelCategoricalHead(nn.Module):
    """`levels` ids in [0, vocab_size) per position, embedded as a sum and predicted in parallel.

    Args:
        d_model: width of the trunk's hidden states.
        vocab_size: codes per level K (the tokenizer's `vocab_size`).
        levels: ids per position Q (the tokenizer's `token_shape[0]`, its residual levels).
    """

    def __init__(self, d_model: int, vocab_size: int, levels: int):
        super().__init__()
        if levels < 1:
            raise ConfigError(f"levels={levels} must be >= 1 (ids per position)")
        self.levels, self.vocab_size = levels, vocab_size
        self.token_shape = (levels,)  # ids per position beyond the grid
        self.embedding = nn.Embedding(levels * (vocab_size + 1), d_model)  # + one empty row per level
        self.proj = nn.Linear(d_model, levels * vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids [..., Q] (EMPTY allowed) -> embeddings [..., D]: the sum of the per-level embeddings."""
        self._check_last_dim(tokens)
        ids = torch.where(tokens == EMPTY, self.vocab_size, tokens)
        offsets = torch.arange(self.levels, device=tokens.device) * (self.vocab_size + 1)
        return self.embedding(ids + offsets).sum(-2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., Q, V]."""
        return self.proj(hidden).unflatten(-1, (self.levels, self.vocab_size))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy over the levels of every position: hidden [..., D], ids [..., Q]; EMPTY and
        `ignore_index` targets are left out."""
        self._check_last_dim(targets)
        targets = torch.where(targets == EMPTY, ignore_index, targets)
        weight = self.proj.weight.unflatten(0, (self.levels, self.vocab_size))  # (Q, V, D)
        flat, ids = hidden.flatten(0, -2), targets.flatten(0, -2)  # (N, D), (N, Q)
        counts = (ids != ignore_index).sum(0)  # (Q,) valid targets per level
        total = hidden.new_zeros(())
        for q in range(self.levels):
            if counts[q]:  # a level's mean over its valid targets, weighted by their number
                mean = linear_cross_entropy(flat, weight[q], ids[:, q], ignore_index=ignore_index)
                total = total + mean * counts[q]
        return total / counts.sum().clamp_min(1)

    def sample(
        self,
        hidden: torch.Tensor,
        sampler: Sampler,
        progress: float | torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """hidden [B, D] (or the CFG batch [2B, D], cond first), the guidance's progress (one, or per row
        [B]) -> ids [B, Q], each level drawn independently."""
        logits = self(hidden)  # (B', Q, V)
        halves = 2 if sampler.guided else 1
        rows = logits.unflatten(0, (halves, -1)).flatten(1, 2).flatten(0, 1)  # (halves * B * Q, V)
        if torch.is_tensor(progress):
            progress = progress.repeat_interleave(self.levels)
        return sampler.pick(rows, progress, generator).view(-1, self.levels)

    def _check_last_dim(self, tokens: torch.Tensor) -> None:
        if tokens.shape[-1] != self.levels:
            raise ConfigError(
                f"the parallel head predicts {self.levels} ids per position but got tokens of shape "
                f"{tuple(tokens.shape)}; set head_kwargs.levels to the tokenizer's number of levels"
            )
