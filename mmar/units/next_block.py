"""Next-block prediction (NBP: Ren et al., 2025, "Next Block Prediction: Video Generation via
Semi-Autoregressive Modeling").

The token grid is cut into equal blocks (a row, a video frame, or any k x k / t x h x w box that tiles
the grid), ordered block-major: blocks in raster order over the block grid, tokens in raster order
inside a block. Attention is bidirectional inside a block and causal across blocks, and targets are
shifted by one block: token j of block k predicts token j of block k + 1. The first block is predicted
from a start block of S = block size slots: the last condition token plus a learned slot embedding
(zero at initialisation), each slot at the RoPE position of the block-0 token it predicts. Generation
makes one trunk call per block, sampling all S tokens of the next block in parallel and writing the KV
cache one block at a time: steps = number of blocks.

With blocks of one token the sequence, positions, mask and loss are exactly those of next-token.
Continuing a prefix (the first k frames, k a multiple of the block's extent in time) feeds its m blocks
in the first pass: K - m passes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.heads import build_token_head
from mmar.kernels import BlockCausal
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions
from mmar.units.decoding import kv_decode


def resolve_block(block: str | list[int] | tuple[int, ...], grid: tuple[int, ...]) -> tuple[int, ...]:
    """A block shape on `grid`: "token", "row" (the last axis), "frame" (video: one time step), or sizes
    per axis; ConfigError unless it tiles the grid."""
    if block == "token":
        shape = (1,) * len(grid)
    elif block == "row":
        shape = (1,) * (len(grid) - 1) + (grid[-1],)
    elif block == "frame":
        if len(grid) != 3:
            raise ConfigError(
                f"block='frame' needs a video grid (T, H, W), got grid {grid}; use 'row' or sizes"
            )
        shape = (1, *grid[1:])
    elif isinstance(block, list | tuple) and all(isinstance(b, int) for b in block):
        shape = tuple(block)
    else:
        raise ConfigError(f"block={block!r} must be 'token', 'row', 'frame' or a list of sizes per axis")
    if len(shape) != len(grid) or any(b < 1 or n % b for b, n in zip(shape, grid)):
        raise ConfigError(
            f"block {list(shape)} does not tile the token grid {list(grid)}: give one size per axis, each "
            "dividing the grid (e.g. [1, W] for rows, [2, 2] for 2x2 blocks)"
        )
    return shape


def block_order(grid: tuple[int, ...], block: tuple[int, ...]) -> torch.Tensor:
    """[N] raster indices in block-major order (blocks in raster order, tokens in raster order inside)."""
    coords = grid_positions(grid)  # (N, A)
    block_grid = torch.tensor([n // b for n, b in zip(grid, block)])
    outer, inner = coords // torch.tensor(block), coords % torch.tensor(block)  # (N, A) each
    ravel = lambda c, dims: (c * torch.tensor([math.prod(dims[i + 1 :]) for i in range(len(dims))])).sum(-1)
    key = ravel(outer, block_grid.tolist()) * math.prod(block) + ravel(inner, list(block))
    return key.argsort()


class NextBlock(PredictionUnit):
    name = "next_block"
    supports_prefix = True

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        vocab_size: int,
        block: str | list[int] = "row",
        head: str = "categorical",
        head_kwargs: dict | None = None,
    ):
        """Args: d_model, grid and vocab_size from the trunk and tokenizer; `block` as `resolve_block`;
        `head` names the token head (`mmar.heads.TOKEN_HEADS`), built with `head_kwargs`."""
        super().__init__(d_model, grid, vocab_size)
        self.block = resolve_block(block, self.grid)
        self.block_size, self.num_blocks = math.prod(self.block), self.seq_len // math.prod(self.block)
        self.register_buffer("order", block_order(self.grid, self.block), persistent=False)  # (N,)
        self.head = build_token_head(head, d_model, vocab_size, **(head_kwargs or {}))
        self.slot_embedding = nn.Parameter(torch.zeros(self.block_size, d_model))  # the start block

    def layout(self, n_cond: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [n_cond - 1 + N, A] and block ids [n_cond - 1 + N] of the full input sequence
        `[cond_1 .. cond_{n-1}, start block, blocks 0 .. K-2]`."""
        grid = grid_positions(self.grid, device)[self.order.to(device)]  # (N, A) in block order
        s = self.block_size
        positions = torch.cat([grid.new_zeros(n_cond - 1, grid.shape[1]), grid[:s], grid[:-s]])
        blocks = torch.arange(self.num_blocks, device=device).repeat_interleave(s) + n_cond - 1  # (N,)
        return positions, torch.cat([torch.arange(n_cond - 1, device=device), blocks])

    def start_block(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B, n_cond, D] -> the inputs before block 0: [B, n_cond - 1 + S, D]."""
        return torch.cat([cond[:, :-1], cond[:, -1:] + self.slot_embedding], dim=1)

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        """tokens [B, *grid, *token_shape], cond [B, n_cond, D] -> inputs [B, n_cond - 1 + N, D]."""
        self.check_tokens(tokens)
        seq = tokens.flatten(1, len(self.grid))[:, self.order]  # (B, N, *token_shape) block-major
        inputs = torch.cat([self.start_block(cond), self.head.embed(seq[:, : -self.block_size])], dim=1)
        positions, blocks = self.layout(cond.shape[1], tokens.device)
        return UnitBatch(inputs, positions, BlockCausal(blocks), seq, {"n_cond": cond.shape[1]})

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        predicting = hidden[:, batch.extras["n_cond"] - 1 :]  # (B, N, D): block k predicts block k + 1
        return {"loss": self.head.loss(predicting, batch.targets)}

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
        """Decode block by block. cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid, *token_shape].

        With `prefix` [B, k, *grid[1:]] (k a multiple of the block's first side), its blocks are the
        output's first ones, fed in the first trunk pass after the start block."""
        self.check_grid(grid)
        n_cond, s = cond.shape[1], self.block_size
        positions, blocks = self.layout(n_cond, cond.device)
        generator = sampler.generator(cond.device)
        first, given = self.start_block(cond), []
        if prefix is not None:
            tokens = self.check_prefix(prefix, cond.shape[0] // (2 if sampler.guided else 1))
            if prefix.shape[1] % self.block[0]:
                raise ConfigError(
                    f"a prefix of {prefix.shape[1]} slices is not a whole number of blocks "
                    f"{list(self.block)}; give a multiple of {self.block[0]}"
                )
            tokens = tokens[:, self.order[: tokens.shape[1]].to(tokens.device)]  # block-major: whole blocks
            given = [tokens]
            first = torch.cat([first, self.head.embed(sampler.cfg_batch(tokens))], dim=1)

        def emit(k: int, hidden: torch.Tensor) -> torch.Tensor:
            # the last S positions predict the next block; flattening them keeps the CFG halves [cond; null]
            rows = hidden[:, -s:].flatten(0, 1)  # (B' S, D)
            picked = self.head.sample(rows, sampler, k / self.num_blocks, generator)
            return picked.unflatten(0, (-1, s))  # (B, S, *token_shape)

        steps = range(sum(t.shape[1] for t in given) // s, self.num_blocks)
        out = kv_decode(
            trunk, first, positions, BlockCausal(blocks), steps, emit, self.head.embed, sampler, use_cache
        )
        ordered = torch.cat(given + out, dim=1)  # (B, N, *token_shape) block-major
        tokens = torch.empty_like(ordered)
        tokens[:, self.order] = ordered
        return tokens.unflatten(1, self.grid)

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.num_blocks
