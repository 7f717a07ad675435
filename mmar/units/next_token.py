"""Next-token prediction in raster order (LlamaGen, Sun et al. 2024).

The sequence is `[cond, t_0, ..., t_{N-2}]` under a causal mask: the condition position predicts the
first token and position i predicts token i. Image tokens carry their 2D (row, col) RoPE coordinates,
condition tokens the zero rotation. Generation decodes one token per trunk call with a static KV cache:
N forward passes for N tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.heads import CategoricalHead
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions


class NextToken(PredictionUnit):
    name = "next_token"

    def __init__(self, d_model: int, grid: tuple[int, ...], vocab_size: int):
        super().__init__(d_model, grid, vocab_size)
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.head = CategoricalHead(d_model, vocab_size)

    def positions(self, n_cond: int, device=None) -> torch.Tensor:
        """[n_cond + N, A]: zeros for the condition, then raster grid coordinates."""
        grid = grid_positions(self.grid, device)  # (N, A)
        return torch.cat([grid.new_zeros(n_cond, grid.shape[1]), grid])

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        """tokens [B, *grid], cond [B, n_cond, D] -> inputs [B, n_cond + N - 1, D], targets [B, N]."""
        self.check_tokens(tokens)
        seq = tokens.flatten(1)  # (B, N)
        inputs = torch.cat([cond, self.embed(seq[:, :-1])], dim=1)  # (B, n_cond + N - 1, D)
        positions = self.positions(cond.shape[1], tokens.device)[: inputs.shape[1]]
        return UnitBatch(inputs, positions, Causal(), seq, {"n_cond": cond.shape[1]})

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        n_cond = batch.extras["n_cond"]
        predicting = hidden[:, n_cond - 1 :]  # (B, N, D): the last cond position predicts token 0
        return {"loss": self.head.loss(predicting, batch.targets)}

    @torch.no_grad()
    def generate(
        self,
        trunk: Trunk,
        cond: torch.Tensor,
        grid: tuple[int, ...],
        sampler: Sampler,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Decode N tokens one by one. cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid]."""
        self.check_grid(grid)
        n_cond, n = cond.shape[1], self.seq_len
        positions = self.positions(n_cond, cond.device)  # (n_cond + N, A)
        cache = (
            trunk.make_cache(cond.shape[0], n_cond + n - 1, cond.device, cond.dtype) if use_cache else None
        )
        generator = sampler.generator(cond.device)
        seq, tokens = cond, []  # seq: what the next trunk call sees
        for i in range(n):
            start = cache.length if use_cache else 0
            hidden = trunk(seq, positions[start : start + seq.shape[1]], Causal(), cache=cache)
            token = sampler.pick(self.head(hidden[:, -1]), progress=i / n, generator=generator)  # (B,)
            tokens.append(token)
            embedded = self.embed(token.repeat(2) if sampler.guided else token)[:, None]  # (B', 1, D)
            seq = embedded if use_cache else torch.cat([seq, embedded], dim=1)
        return torch.stack(tokens, dim=1).view(-1, *self.grid)

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.seq_len
