"""Hierarchical masked autoregression (Hi-MAR: Zheng et al., 2025, "Hierarchical Masked Autoregressive
Models with Low-Resolution Token Pivots").

MAR with a first phase over a few low-resolution pivot tokens: the p x p average-pooled latents of the
grid. The sequence is `[cond, pivots (P = p^2), dense tokens (N)]` with full attention; pivots carry a
learned pivot embedding and the RoPE position of their window's centre cell. Each training sample is,
with probability `pivot_prob`, a pivot-phase sample (pivots masked with MAR's ratio, every dense token
masked; the loss is on the masked pivots) or a dense-phase sample (clean pivots, dense tokens masked with
the ratio; the loss is on the masked dense tokens). Generation runs MAR's cosine schedule over the pivots
in `pivot_steps` steps with the dense tokens all masked, then over the dense tokens in `steps` steps
conditioned on the generated pivots: pivot_steps + steps trunk passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import UnitBatch, grid_positions
from mmar.units.masked_ar import MaskedAR


class HiMAR(MaskedAR):
    name = "hi_mar"
    token_kinds = ("continuous",)  # pivots are averages of latents
    supports_padding = False

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        latent_dim: int,
        pivots: int = 2,
        pivot_steps: int = 4,
        pivot_prob: float = 0.5,
        **mar_kwargs,
    ):
        """Args: as `MaskedAR`, plus the pivot grid side p (dividing the token grid), the pivot phase's
        generation steps, and the share of training samples in the pivot phase."""
        super().__init__(d_model, grid, latent_dim, **mar_kwargs)
        if len(self.grid) != 2 or pivots < 1 or any(n % pivots for n in self.grid):
            raise ConfigError(
                f"pivots={pivots} must divide the image token grid {list(self.grid)} (e.g. 2 or 4)"
            )
        if pivot_steps < 1 or not 0 < pivot_prob < 1:
            raise ConfigError(
                f"need pivot_steps >= 1 and 0 < pivot_prob < 1, got {pivot_steps}, {pivot_prob}"
            )
        self.pivots, self.pivot_steps, self.pivot_prob = pivots, pivot_steps, pivot_prob
        self.num_pivots = pivots * pivots
        self.pivot_embedding = nn.Parameter(torch.randn(d_model) * 0.02)

    def positions(self, n_cond: int, device=None) -> torch.Tensor:
        """[n_cond + P + N, 2]: zeros, the pivots' window centres, the dense grid."""
        window = self.grid[0] // self.pivots
        pivot = grid_positions((self.pivots, self.pivots), device) * window + window // 2
        dense = grid_positions(self.grid, device)
        return torch.cat([dense.new_zeros(n_cond, 2), pivot, dense])

    def inputs(self, cond: torch.Tensor, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        seq = super().inputs(cond, x, masked)  # (B, n_cond + P + N, D)
        start = cond.shape[1]
        kind = torch.zeros(seq.shape[1], 1, device=seq.device, dtype=seq.dtype)
        kind[start : start + self.num_pivots] = 1  # the pivot embedding marks the low-resolution tokens
        return seq + kind * self.pivot_embedding

    def pool(self, dense: torch.Tensor) -> torch.Tensor:
        """Dense tokens [B, H, W, C] -> pivots [B, P, C], the average over each pivot's window."""
        pooled = F.adaptive_avg_pool2d(dense.permute(0, 3, 1, 2), self.pivots)  # (B, C, p, p)
        return pooled.flatten(2).transpose(1, 2)

    def prepare(
        self, tokens: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor | None = None
    ) -> UnitBatch:
        """tokens [B, H, W, C], cond [B, n_cond, D] -> inputs [B, n_cond + P + N, D]."""
        if valid is not None:
            raise ConfigError("hi_mar pools a full token grid into pivots: it takes no padded tokens")
        self.check_continuous(tokens)
        dense = tokens.flatten(1, 2)  # (B, N, C)
        x = torch.cat([self.pool(tokens), dense], dim=1)  # (B, P + N, C)
        everything = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        pivot_masked = self.sample_masked(everything[:, : self.num_pivots])  # (B, P)
        dense_masked = self.sample_masked(everything[:, self.num_pivots :])  # (B, N)
        pivot_phase = torch.rand(x.shape[0], 1, device=x.device) < self.pivot_prob  # (B, 1)
        masked = torch.cat([pivot_masked & pivot_phase, dense_masked | pivot_phase], dim=1)  # (B, P + N)
        predicted = torch.cat([pivot_masked & pivot_phase, dense_masked & ~pivot_phase], dim=1)
        extras = {"n_cond": cond.shape[1], "masked": masked, "predicted": predicted}
        return UnitBatch(
            self.inputs(cond, x, masked), self.positions(cond.shape[1], x.device), None, x, extras
        )

    @torch.no_grad()
    def generate(
        self, trunk: Trunk, cond: torch.Tensor, grid: tuple[int, ...], sampler: Sampler
    ) -> torch.Tensor:
        """cond [B or 2B (CFG), n_cond, D] -> tokens [B, H, W, C]: pivots first, then the dense tokens."""
        self.check_grid(grid)
        b = cond.shape[0] // 2 if sampler.guided else cond.shape[0]
        p, n, device = self.num_pivots, self.seq_len, cond.device
        x = torch.zeros(b, p + n, self.latent_dim, device=device)
        masked = torch.ones(b, p + n, dtype=torch.bool, device=device)
        generator = sampler.generator(device)
        is_pivot = torch.arange(p + n, device=device) < p
        for region, steps in [(is_pivot, self.pivot_steps), (~is_pivot, self.steps)]:
            self.unmask(trunk, cond, (x, masked), region.expand(b, -1), steps, sampler, generator)
        return x[:, p:].unflatten(1, self.grid)

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.pivot_steps + self.steps
