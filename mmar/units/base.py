"""The PredictionUnit contract: how a paradigm turns tokens into a training sequence and back.

A unit owns its input embedding and head(s) and four methods:

- `prepare(tokens, cond) -> UnitBatch`: inputs, positions, attention mask and targets (teacher forcing)
- `loss(hidden, batch) -> dict`: losses from the trunk's hidden states; "loss" is the one optimised
- `generate(trunk, cond, grid, sampler) -> tokens`: the inference loop (KV cache where it applies)
- `num_steps(grid) -> int`: trunk forward passes `generate` makes (tests hold this to the paper)

Units with `supports_prefix` also continue a given prefix: `generate(..., prefix=tokens [B, k, ...])`
keeps the first k slices of the grid's first axis (the first k latent frames of a video, the first k
rows of an image) exactly as given and generates the rest conditioned on them.

Adding a paradigm is one new file with a `PredictionUnit` subclass and one line in `units/__init__.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.kernels import Mask
from mmar.sampling import Sampler
from mmar.trunk import Trunk


@dataclass
class UnitBatch:
    """One teacher-forced training sequence, ready for the trunk."""

    inputs: torch.Tensor  # (B, T, D) embeddings
    positions: torch.Tensor  # (T, A) or (B, T, A) grid coordinates for RoPE
    mask: Mask | None  # attention mask object (None = bidirectional)
    targets: torch.Tensor  # what the loss compares against, unit-specific layout
    extras: dict[str, Any] = field(default_factory=dict)


def grid_positions(grid: tuple[int, ...], device=None) -> torch.Tensor:
    """Raster-order coordinates of every cell of `grid`: [prod(grid), len(grid)] (long)."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


class PredictionUnit(nn.Module):
    """Base class of prediction units; see the module docstring for the contract."""

    name: ClassVar[str]
    token_kinds: ClassVar[tuple[str, ...]] = ("discrete",)
    """Tokenizer kinds ("discrete", "continuous") this unit can model."""
    supports_prefix: ClassVar[bool] = False
    """Whether `generate` takes `prefix` (continuation of given leading frames or rows)."""
    supports_speculative: ClassVar[bool] = False
    """Whether `generate` decodes by speculative Jacobi decoding when `sampler.speculative` is set."""

    def __init__(self, d_model: int, grid: tuple[int, ...], vocab_size: int | None = None):
        super().__init__()
        self.d_model, self.grid, self.vocab_size = d_model, tuple(grid), vocab_size

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Tokens must be laid out on this unit's grid: [B, *grid, ...]."""
        if tuple(tokens.shape[1 : 1 + len(self.grid)]) != self.grid:
            raise ConfigError(
                f"tokens of grid {tuple(tokens.shape[1:])} do not match the generator's grid {self.grid}; "
                "set model.image_size to the size the tokenizer was trained on"
            )

    def check_grid(self, grid: tuple[int, ...]) -> None:
        if tuple(grid) != self.grid:
            raise ConfigError(
                f"cannot generate on grid {tuple(grid)}: this {self.name} unit was built for {self.grid}"
            )

    def check_prefix(self, prefix: torch.Tensor, batch: int) -> torch.Tensor:
        """A continuation prefix [B, k, *grid[1:], *token_shape] -> its tokens in raster order
        [B, k * prod(grid[1:]), *token_shape]: the first cells of the flattened grid."""
        inner = self.grid[1:]
        if (
            prefix.ndim < 1 + len(self.grid)
            or tuple(prefix.shape[2 : 1 + len(self.grid)]) != inner
            or not 0 < prefix.shape[1] < self.grid[0]
            or len(prefix) != batch
        ):
            raise ConfigError(
                f"a prefix to continue must hold the first k of the grid's {self.grid[0]} leading slices, "
                f"[{batch}, k, {', '.join(map(str, inner))}] with 0 < k < {self.grid[0]}, got "
                f"{tuple(prefix.shape)}"
            )
        return prefix.flatten(1, len(self.grid))

    def set_progress(self, progress: float) -> None:
        """Hook called by `GeneratorModule` before each training step with the fraction of training done
        (0 to 1), for units with schedules (e.g. RAR's permutation probability); a no-op here."""

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        raise NotImplementedError

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def generate(
        self, trunk: Trunk, cond: torch.Tensor, grid: tuple[int, ...], sampler: Sampler
    ) -> torch.Tensor:
        raise NotImplementedError

    def num_steps(self, grid: tuple[int, ...]) -> int:
        raise NotImplementedError
