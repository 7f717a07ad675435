"""Code patterns: how the residual codes of an audio codec are laid out for a prediction unit (MusicGen,
Copet et al., 2023, section 2.2).

A residual codec gives Q ids per frame, codes [B, T, Q]. A pattern maps them to the token grid a unit
models and back (`apply` / `revert`, exact inverses on real codes):

- "stack": the grid (T,) with Q ids per cell, predicted together by a head whose `token_shape` is (Q,):
  `channel_ar` (level by level inside the frame, the RQ-Transformer / Moshi depth-transformer layout) or
  `parallel` (all levels at once). T steps of a raster unit.
- "flatten": the grid (T, Q) of single ids, RoPE over (frame, level); raster order is MusicGen's
  flattening (frame by frame, level by level inside a frame): T * Q steps of next_token, and next_block
  with block [1, Q] predicts a frame's Q levels in parallel from the previous frames (T steps).
- "delay": MusicGen's delay interleaving, the grid (T + Q - 1,) with Q ids per cell, level q delayed by q
  steps: cell s holds level q of frame s - q. Predicting cell s in parallel (the `parallel` head) then
  conditions level q of frame t on levels < q of the same frame, at the cost of Q - 1 extra steps. The
  Q(Q - 1) cells outside the codes (s - q < 0 or >= T) hold `EMPTY`: they are embedded by the head's
  empty row, never a training target (the head ignores them) and forced, not sampled, at generation
  (`fixed`).
"""

from __future__ import annotations

import torch

from mmar.errors import ConfigError

EMPTY = -1
"""Marks a delay cell outside the codes; heads map it to their empty input row (`ParallelCategoricalHead`)."""

_UNKNOWN = -2  # a code to be generated, in `fixed`
PATTERNS = ("stack", "flatten", "delay")


class CodePattern:
    """A layout of a tokenizer's codes on a unit's grid; see the module docstring. "stack" is the identity
    for any tokenizer; "flatten" and "delay" need residual codes [B, T, Q], Q >= 2."""

    def __init__(self, name: str, token_shape: tuple[int, ...] = ()):
        if name not in PATTERNS:
            raise ConfigError(f"unknown code pattern '{name}'; choose one of {list(PATTERNS)}")
        if name != "stack" and (len(token_shape) != 1 or token_shape[0] < 2):
            raise ConfigError(
                f"code pattern '{name}' interleaves residual levels, but the tokenizer gives "
                f"{token_shape or 'one'} id(s) per cell, not several levels; use code_pattern: stack"
            )
        self.name, self.token_shape = name, tuple(token_shape)
        self.levels = token_shape[0] if name != "stack" else None

    def grid(self, grid: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(unit grid, ids per unit grid cell) for the tokenizer's grid, (T,) for a codec."""
        if self.name == "stack":
            return tuple(grid), self.token_shape
        if len(grid) != 1:
            raise ConfigError(f"code pattern '{self.name}' lays out a 1D grid of frames, got grid {grid}")
        if self.name == "flatten":
            return (grid[0], self.levels), ()
        return (grid[0] + self.levels - 1,), self.token_shape

    def apply(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T, Q] (or [B, T] for one level) -> tokens on the unit's grid."""
        if self.name != "delay":
            return codes
        b, t, q = codes.shape
        out = codes.new_full((b, t + q - 1, q), EMPTY)
        for level in range(q):  # level q occupies cells q .. q + T - 1
            out[:, level : level + t, level] = codes[:, :, level]
        return out

    def revert(self, tokens: torch.Tensor) -> torch.Tensor:
        """The inverse of `apply`: tokens on the unit's grid -> codes [B, T, Q]."""
        if self.name != "delay":
            return tokens
        q = self.levels
        t = tokens.shape[1] - q + 1
        return torch.stack([tokens[:, level : level + t, level] for level in range(q)], dim=-1)

    def prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """The unit-grid prefix that continues the first k frames codes [B, k, Q]: cells 0 .. k - 1. For
        the delay pattern those cells hold only codes of frames < k; the given codes of the cells after
        them (the last frames' higher levels) are set through `fixed`."""
        return self.apply(codes)[:, : codes.shape[1]]

    def fixed(
        self, frames: int, prefix: torch.Tensor | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(values, mask), both [B or 1, N, *ids per cell] over the unit's sequence: entries generation
        sets instead of sampling, or None. For the delay pattern: its EMPTY cells and, when continuing
        the given first frames `prefix` [B, k, Q], their codes in the cells after the prefix's k."""
        if self.name != "delay":
            return None
        rows = 1 if prefix is None else len(prefix)
        codes = torch.full((rows, frames, self.levels), _UNKNOWN, dtype=torch.long, device=device)
        if prefix is not None:
            codes[:, : prefix.shape[1]] = prefix
        values = self.apply(codes)
        return values, values != _UNKNOWN
