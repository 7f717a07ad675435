"""Randomized-order autoregression (RAR: Yu et al., 2024, "Randomized Autoregressive Visual Generation").

Training sequences are next-token sequences `[cond, t_pi(0), ..., t_pi(N-2)]` over a per-sample permutation
pi of the raster order, drawn with probability r and the identity otherwise. The tokens keep their own
2D RoPE coordinates (tokens and position embeddings are permuted together), and a learned target-aware
position embedding tells each input which position it must predict next: the last condition position
gets the embedding of pi(0), token t_pi(i) that of pi(i + 1); the other condition positions get none. The
mask stays plainly causal over the permuted sequence. r is annealed: 1 until `anneal_start` of training,
then linearly to 0 at `anneal_end` (RAR: 0.5 and 0.75), so the model ends as a raster-order model, and
generation is raster order with a KV cache, N steps. Evaluation-mode losses use the raster order.
"""

from __future__ import annotations

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.units.base import UnitBatch, grid_positions
from mmar.units.next_token import NextToken


def permute_probability(progress: float, anneal_start: float = 0.5, anneal_end: float = 0.75) -> float:
    """r(progress): 1 up to `anneal_start`, linear to 0 at `anneal_end`, 0 after."""
    if progress <= anneal_start:
        return 1.0
    if progress >= anneal_end:
        return 0.0
    return 1.0 - (progress - anneal_start) / (anneal_end - anneal_start)


def sample_orders(batch: int, n: int, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[batch, n] orders: a uniform random permutation with probability `prob`, else the raster order."""
    random = torch.rand(batch, n, generator=generator).argsort(dim=1)  # (B, N)
    raster = torch.arange(n).expand(batch, n)
    permute = torch.rand(batch, 1, generator=generator) < prob  # (B, 1)
    return torch.where(permute, random, raster)


class RandomOrder(NextToken):
    name = "random_order"

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        vocab_size: int,
        head: str = "categorical",
        head_kwargs: dict | None = None,
        anneal_start: float = 0.5,
        anneal_end: float = 0.75,
    ):
        """Args: as `NextToken`, plus the fractions of training where r starts and stops annealing."""
        if not 0.0 <= anneal_start <= anneal_end <= 1.0:
            raise ConfigError(
                f"need 0 <= anneal_start <= anneal_end <= 1 for the random_order unit, got "
                f"{anneal_start} and {anneal_end} (RAR: 0.5 and 0.75)"
            )
        super().__init__(d_model, grid, vocab_size, head, head_kwargs)
        self.anneal_start, self.anneal_end = anneal_start, anneal_end
        self.target_embedding = nn.Embedding(self.seq_len, d_model)  # by raster index of the target
        nn.init.normal_(self.target_embedding.weight, std=0.02)
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)

    @property
    def permute_prob(self) -> float:
        """r at the current point of training (0 in evaluation mode: raster order)."""
        if not self.training:
            return 0.0
        return permute_probability(self.progress, self.anneal_start, self.anneal_end)

    def prepare(
        self, tokens: torch.Tensor, cond: torch.Tensor, orders: torch.Tensor | None = None
    ) -> UnitBatch:
        """tokens [B, *grid, *token_shape], cond [B, n_cond, D] -> inputs [B, n_cond + N - 1, D].

        `orders` [B, N] (raster indices) overrides the sampled permutations, e.g. in tests.
        """
        self.check_tokens(tokens)
        b, n_cond, n = tokens.shape[0], cond.shape[1], self.seq_len
        if orders is None:
            orders = sample_orders(b, n, self.permute_prob)
        orders = orders.to(tokens.device)  # (B, N)
        seq = tokens.flatten(1, len(self.grid))  # (B, N, *token_shape)
        index = orders.view(b, n, *[1] * (seq.ndim - 2)).expand_as(seq)
        permuted = seq.gather(1, index)  # (B, N, *token_shape): t_pi(0), ..., t_pi(N-1)
        embedded = self.head.embed(permuted[:, :-1])  # (B, N - 1, D)
        inputs = torch.cat([cond, embedded], dim=1)  # (B, n_cond + N - 1, D)
        targets_ahead = self.target_embedding(orders)  # (B, N, D): position n_cond - 1 + i predicts pi(i)
        inputs = torch.cat([inputs[:, : n_cond - 1], inputs[:, n_cond - 1 :] + targets_ahead], dim=1)
        grid = grid_positions(self.grid, tokens.device)[orders[:, :-1]]  # (B, N - 1, A)
        positions = torch.cat([grid.new_zeros(b, n_cond, grid.shape[-1]), grid], dim=1)  # (B, T, A)
        return UnitBatch(inputs, positions, Causal(), permuted, {"n_cond": n_cond, "orders": orders})

    def add_target_embedding(self, x: torch.Tensor, start: int, n_cond: int) -> torch.Tensor:
        """Raster-order generation: sequence position p predicts token p - n_cond + 1."""
        targets = torch.arange(start, start + x.shape[1], device=x.device) - (n_cond - 1)  # (T,)
        valid = (targets >= 0) & (targets < self.seq_len)  # none for the earlier condition positions
        extra = self.target_embedding(targets.clamp(0, self.seq_len - 1)) * valid[:, None]  # (T, D)
        return x + extra.to(x.dtype)
