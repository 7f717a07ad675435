"""Next-token prediction in raster order (LlamaGen, Sun et al. 2024).

The sequence is `[cond, t_0, ..., t_{N-2}]` under a causal mask: the condition position predicts the
first token and position i predicts token i. Image tokens carry their 2D (row, col) RoPE coordinates,
condition tokens the zero rotation. Generation decodes one token per trunk call with a static KV cache:
N forward passes for N tokens. Continuing a prefix of P given tokens (`prefix`: the first frames or rows)
feeds them with the condition in one pass and decodes the rest: N - P passes. With
`sampler.speculative` the tokens are decoded by speculative Jacobi decoding instead, several per pass
(`mmar.units.speculative`).
"""

from __future__ import annotations

from functools import partial

import torch

from mmar.errors import ConfigError
from mmar.heads import build_token_head
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions
from mmar.units.decoding import kv_decode
from mmar.units.speculative import speculative_generate


class NextToken(PredictionUnit):
    name = "next_token"
    supports_prefix = True
    supports_speculative = True

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        vocab_size: int,
        head: str = "categorical",
        head_kwargs: dict | None = None,
    ):
        """Args: d_model, grid and vocab_size from the trunk and tokenizer; `head` names the token head
        (`mmar.heads.TOKEN_HEADS`) that embeds and predicts each token, built with `head_kwargs`."""
        super().__init__(d_model, grid, vocab_size)
        self.head = build_token_head(head, d_model, vocab_size, **(head_kwargs or {}))

    def positions(self, n_cond: int, device=None) -> torch.Tensor:
        """[n_cond + N, A]: zeros for the condition, then raster grid coordinates."""
        grid = grid_positions(self.grid, device)  # (N, A)
        return torch.cat([grid.new_zeros(n_cond, grid.shape[1]), grid])

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        """tokens [B, *grid, *token_shape], cond [B, n_cond, D] -> inputs [B, n_cond + N - 1, D]."""
        self.check_tokens(tokens)
        seq = tokens.flatten(1, len(self.grid))  # (B, N, *token_shape)
        inputs = torch.cat([cond, self.head.embed(seq[:, :-1])], dim=1)  # (B, n_cond + N - 1, D)
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
        teacher: torch.Tensor | None = None,
        teacher_prob: float = 0.0,
        prefix: torch.Tensor | None = None,
        fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
        neighbours: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode N tokens one by one. cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid].

        With `prefix` [B, k, *grid[1:]] (the first k frames or rows), its P tokens are the output's first
        P, fed in the first trunk pass together with the condition; the N - P others are decoded.

        With `teacher` tokens [B, *grid] (RobusTok's decoder post-training), each generated token is
        replaced by the teacher's with probability `teacher_prob`, independently per sample and step,
        and decoding continues from whichever token was kept. These draws use their own random stream
        (seeded from `sampler.seed`), so that `teacher_prob=0` reproduces plain generation exactly.

        `fixed` = (values, mask), both [B or 1, N, *token_shape], sets the masked entries to the given
        values instead of sampling them (the empty and given cells of a code pattern, `mmar.code_patterns`).

        With `sampler.speculative` ("sjd" or "lantern") the tokens come from `speculative_generate`, at
        most N passes; `neighbours` [V, >= lantern_k] is LANTERN's table of each code's nearest codes.
        """
        self.check_grid(grid)
        if sampler.speculative is not None:
            if teacher is not None:
                raise ConfigError("teacher forcing decodes one token per pass: drop sampler.speculative")
            tokens = speculative_generate(self, trunk, cond, sampler, use_cache, prefix, fixed, neighbours)
            return tokens.unflatten(1, self.grid)  # (B, *grid)
        if teacher is not None:
            self.check_tokens(teacher)
            teacher = teacher.flatten(1, len(self.grid))  # (B, N, *token_shape)
            draws = sampler.generator(cond.device, stream=1)
            keep = torch.rand(teacher.shape[:2], generator=draws, device=cond.device) < teacher_prob  # (B, N)
        n_cond, n = cond.shape[1], self.seq_len
        given, first = self.start_inputs(cond, sampler, prefix)
        generator = sampler.generator(cond.device)

        def emit(i: int, hidden: torch.Tensor) -> torch.Tensor:
            token = self.head.sample(hidden[:, -1], sampler, i / n, generator)  # (B, *token_shape)
            if teacher is not None:
                token = torch.where(keep[:, i].view(-1, *[1] * (token.ndim - 1)), teacher[:, i], token)
            if fixed is not None:
                token = torch.where(fixed[1][:, i], fixed[0][:, i], token)
            return token[:, None]  # (B, 1, *token_shape)

        positions = self.positions(n_cond, cond.device)[:-1]  # (n_cond + N - 1, A): the last is never fed
        prepare = partial(self.add_target_embedding, n_cond=n_cond)  # RAR's target-aware embedding
        steps = range(0 if given is None else given.shape[1], n)
        out = kv_decode(
            trunk, first, positions, Causal(), steps, emit, self.head.embed, sampler, use_cache, prepare
        )
        given = [] if given is None else [given]
        return torch.cat(given + out, dim=1).unflatten(1, self.grid)  # (B, *grid, *token_shape)

    def start_inputs(
        self, cond: torch.Tensor, sampler: Sampler, prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The given tokens of a `prefix` (None, or [B, P, *token_shape] in raster order) and the first
        pass's inputs: the condition [B', n_cond, D], then the prefix's embeddings (read by both CFG
        halves)."""
        if prefix is None:
            return None, cond
        given = self.check_prefix(prefix, cond.shape[0] // (2 if sampler.guided else 1))
        return given, torch.cat([cond, self.head.embed(sampler.cfg_batch(given))], dim=1)

    def add_target_embedding(self, x: torch.Tensor, start: int, n_cond: int) -> torch.Tensor:
        """Hook for what the input at sequence position `start + t` learns about the token it predicts,
        token `start + t - n_cond + 1` (RAR's target-aware embedding); x [B, T, D] is unchanged here."""
        return x

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.seq_len
