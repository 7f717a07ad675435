"""Next-neighbor prediction (NAR: He et al., 2025, "Neighboring Autoregressive Modeling for Efficient
Visual Generation").

The training sequence keeps the raster order and RoPE coordinates, `[cond, t_0, ..., t_{N-1}]`, under
the proximity mask: token p attends to every token p' with sum(p') <= sum(p) (h' + w' <= h + w; with
time as a third axis for video), i.e. to its own and all earlier anti-diagonals. Dimension-oriented
heads predict neighbours: the head of axis a maps the hidden state of p to the distribution of p + e_a
(the last axis, "right", uses the shared token head directly; every other axis adds one head layer), and
the condition predicts the first token. A token reachable from two (or three) predecessors gets the
average of their heads' logits at generation time. Generation decodes one anti-diagonal per trunk call,
writing the KV cache one diagonal at a time: 2n - 1 steps for n x n (t + h + w - 2 for video).
Continuing a prefix (the first k frames or rows) writes its given tokens over the sampled ones on every
diagonal, so each later token reads them wherever the proximity mask lets it; the steps are unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.heads import CategoricalHead
from mmar.kernels import BlockCausal, proximity
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions
from mmar.units.decoding import kv_decode


class HeadLayer(nn.Module):
    """One residual MLP layer turning the shared hidden state into an axis-specific one (identity at init)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.SiLU(), nn.Linear(4 * d_model, d_model))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class NextNeighbor(PredictionUnit):
    name = "next_neighbor"
    supports_prefix = True

    def __init__(self, d_model: int, grid: tuple[int, ...], vocab_size: int):
        """Args: d_model, grid ((H, W) or (T, H, W)) and vocab_size from the trunk and tokenizer."""
        super().__init__(d_model, grid, vocab_size)
        if len(self.grid) not in (2, 3):
            raise ConfigError(f"next_neighbor needs an image (H, W) or video (T, H, W) grid, got {self.grid}")
        self.head = CategoricalHead(d_model, vocab_size)  # averaged logits need one categorical id per token
        self.axis_layers = nn.ModuleList(HeadLayer(d_model) for _ in self.grid[:-1])  # the last axis: none
        coords = grid_positions(self.grid)  # (N, A)
        self.register_buffer("coords", coords, persistent=False)
        self.register_buffer("levels", coords.sum(-1), persistent=False)  # (N,) anti-diagonal index
        self.strides = [math.prod(self.grid[a + 1 :]) for a in range(len(self.grid))]

    def axis_hidden(self, hidden: torch.Tensor, axis: int) -> torch.Tensor:
        """What the head reads [..., D] to predict the neighbour along `axis` of the given tokens."""
        return self.axis_layers[axis](hidden) if axis < len(self.axis_layers) else hidden

    def positions(self, n_cond: int, device=None) -> torch.Tensor:
        coords = self.coords.to(device)
        return torch.cat([coords.new_zeros(n_cond, coords.shape[1]), coords])  # (n_cond + N, A)

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        """tokens [B, *grid], cond [B, n_cond, D] -> inputs [B, n_cond + N, D] under the proximity mask."""
        self.check_tokens(tokens)
        if tokens.ndim != 1 + len(self.grid):
            raise ConfigError(
                "next_neighbor predicts one id per grid cell; use a tokenizer with token_shape ()"
            )
        seq = tokens.flatten(1)  # (B, N)
        inputs = torch.cat([cond, self.head.embed(seq)], dim=1)
        n_cond = cond.shape[1]
        mask = proximity(self.grid, n_cond)
        return UnitBatch(inputs, self.positions(n_cond, tokens.device), mask, seq, {"n_cond": n_cond})

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over all (token, axis) -> neighbour pairs and condition -> first token."""
        n_cond, seq = batch.extras["n_cond"], batch.targets
        h = hidden[:, n_cond:]  # (B, N, D) hidden state of each token
        terms = [(self.head.loss(hidden[:, n_cond - 1], seq[:, 0]), 1)]
        for axis, stride in enumerate(self.strides):
            src = (self.coords[:, axis] < self.grid[axis] - 1).nonzero().squeeze(1)  # tokens with a neighbour
            terms.append((self.head.loss(self.axis_hidden(h[:, src], axis), seq[:, src + stride]), len(src)))
        total = sum(count for _, count in terms)
        return {"loss": sum(loss * count for loss, count in terms) / total}

    def diagonal(self, level: int) -> torch.Tensor:
        """Raster indices of the tokens on anti-diagonal `level`, in raster order."""
        return (self.levels == level).nonzero().squeeze(1)

    @torch.no_grad()
    def generate(
        self,
        trunk: Trunk,
        cond: torch.Tensor,
        grid: tuple[int, ...],
        sampler: Sampler,
        use_cache: bool = True,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode one anti-diagonal per step. cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid]; the
        tokens of a `prefix` [B, k, *grid[1:]] are kept as given."""
        self.check_grid(grid)
        n_cond, steps, device = cond.shape[1], self.num_steps(grid), cond.device
        diagonals = [self.diagonal(d).to(device) for d in range(steps)]
        fed_order = torch.cat(diagonals[:-1])  # the last diagonal is never fed back
        positions = torch.cat([self.positions(n_cond, device)[:n_cond], self.coords.to(device)[fed_order]])
        mask = BlockCausal(
            torch.cat([torch.arange(-n_cond, 0, device=device), self.levels.to(device)[fed_order]])
        )
        generator = sampler.generator(device)
        tokens = torch.zeros(
            cond.shape[0] // (2 if sampler.guided else 1), self.seq_len, dtype=torch.long, device=device
        )
        given = None
        if prefix is not None:
            given = self.check_prefix(prefix, tokens.shape[0])  # (B, P): raster cells 0 .. P - 1

        def emit(d: int, hidden: torch.Tensor) -> torch.Tensor:
            if d == 0:
                logits = self.head(hidden[:, -1:])  # (B', 1, V): the condition predicts token 0
            else:
                logits = self.neighbour_logits(
                    hidden[:, -len(diagonals[d - 1]) :], diagonals[d - 1], diagonals[d]
                )
            # flattening the diagonal's positions keeps the CFG halves [cond; null]
            picked = sampler.pick(logits.flatten(0, 1), d / steps, generator).unflatten(
                0, (-1, logits.shape[1])
            )
            if given is not None:  # the given cells of this diagonal keep their tokens
                known = diagonals[d] < given.shape[1]
                picked[:, known] = given[:, diagonals[d][known]]
            tokens[:, diagonals[d]] = picked  # (B, T)
            return picked

        kv_decode(trunk, cond, positions, mask, range(steps), emit, self.head.embed, sampler, use_cache)
        return tokens.unflatten(1, self.grid)

    def neighbour_logits(
        self, hidden: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Averaged head logits [B, T, V] for `targets` (raster ids on one diagonal) from the hidden states
        [B, S, D] of `sources` (raster ids on the previous diagonal)."""
        where = torch.full((self.seq_len,), -1, dtype=torch.long, device=hidden.device)
        where[sources] = torch.arange(len(sources), device=hidden.device)  # raster id -> slot in `hidden`
        total, count = 0, torch.zeros(len(targets), 1, device=hidden.device)
        for axis, stride in enumerate(self.strides):
            has = self.coords.to(hidden.device)[targets, axis] > 0  # (T,) a predecessor along this axis
            slot = where[(targets - stride).clamp(min=0)]
            logits = self.head(self.axis_hidden(hidden[:, slot.clamp(min=0)], axis))  # (B, T, V)
            total = total + logits * has[:, None]
            count = count + has[:, None]
        return total / count

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return sum(self.grid) - len(self.grid) + 1
