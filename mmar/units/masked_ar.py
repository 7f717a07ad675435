"""Masked autoregression over continuous tokens (MAR: Li et al., 2024, "Autoregressive Image Generation
without Vector Quantization").

Training: a random order per sample, a mask ratio r from a normal (mean 1, std 0.25) truncated to
[0.7, 1], one per batch as in MAR; the first ceil(r N) tokens of the order are replaced by a learned mask
embedding and the trunk attends bidirectionally over `[cond, tokens]`. A per-token flow head (AdaLN MLP)
learns each masked token from the trunk's hidden state at its position (the head batch is repeated
`head_batch_mul` times with fresh noise and times, MAR's diffusion_batch_mul).

Generation: K steps over a random order; after step k, floor(N cos(pi/2 (k + 1) / K)) tokens stay
masked, clamped to at least one and at most one fewer than were masked before (all revealed at the
last step). Guidance acts on the head's velocity with shared noise; with the sampler's "linear" schedule
its scale is 1 + (s - 1) (N - masked) / N, MAR's ramp in the revealed fraction; temperature scales the
head's sampling noise. A trunk pass per step: K steps. The tokens of a continuation `prefix` start
unmasked, are read by every step and never resampled; the schedule runs over the others.

Variable-length tokens (the subobject tokenizer's padded segments) come with `valid` [B, N]: padding is
never masked, predicted or attended to, and each image runs the schedule over its own K_b real tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.heads import build_token_head
from mmar.heads.flow import FlowHead
from mmar.kernels import Dense
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions


def masked_after(step: int, steps: int, n: int, masked_now: int) -> int:
    """Tokens still masked after `step` (0-based) of `steps`: MAR's cosine schedule with its clamps."""
    if step >= steps - 1:
        return 0
    keep = math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps))
    return max(1, min(masked_now - 1, keep))


def sample_mask_ratio(low: float = 0.7, mean: float = 1.0, std: float = 0.25, generator=None) -> float:
    """A draw from N(mean, std^2) truncated to [low, 1] (inverse-CDF sampling)."""
    a, b = torch.special.ndtr(torch.tensor([(low - mean) / std, (1 - mean) / std], dtype=torch.float64))
    u = a + (b - a) * torch.rand((), generator=generator, dtype=torch.float64)
    return float((mean + std * torch.special.ndtri(u)).clamp(low, 1.0))


class MaskedAR(PredictionUnit):
    name = "masked_ar"
    token_kinds = ("continuous", "discrete")
    supports_padding = True
    supports_prefix = True

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        latent_dim: int | None = None,
        vocab_size: int | None = None,
        head: str = "flow",
        head_kwargs: dict | None = None,
        steps: int = 64,
        head_width: int = 256,
        head_depth: int = 3,
        head_steps: int = 32,
        head_batch_mul: int = 4,
        mask_min: float = 0.7,
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        """Args: d_model and grid from the trunk and tokenizer; latent_dim the tokens' channels (continuous)
        or vocab_size (discrete); `head` "flow" (continuous) or a token head of `mmar.heads.TOKEN_HEADS`
        for discrete tokens (e.g. TokenBridge's "channel_ar", built with `head_kwargs`); `steps` the
        generation steps K; the flow head's width, depth (AdaLN blocks), integration steps and batch
        repetition; `mask_min` the lower end of the mask ratio; the logit-normal of training times."""
        super().__init__(d_model, grid, vocab_size)
        if steps < 1 or head_steps < 1 or head_batch_mul < 1 or not 0 < mask_min <= 1:
            raise ConfigError(
                f"masked_ar needs steps, head_steps, head_batch_mul >= 1 and 0 < mask_min <= 1 (got {steps}, "
                f"{head_steps}, {head_batch_mul}, {mask_min})"
            )
        self.latent_dim, self.steps, self.head_steps = latent_dim, steps, head_steps
        self.head_batch_mul, self.mask_min = head_batch_mul, mask_min
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.continuous = head == "flow"
        if self.continuous != (latent_dim is not None):
            kinds = {True: "continuous", False: "discrete"}
            raise ConfigError(
                f"{self.name} with head '{head}' models {kinds[self.continuous]} tokens but the tokenizer's "
                f"are {kinds[latent_dim is not None]}; use head: flow for continuous tokenizers, or a token "
                "head (channel_ar, categorical) for discrete ones"
            )
        if self.continuous:
            self.head = FlowHead(d_model, latent_dim, head_width, head_depth, t_mean, t_std)
            self.embed = nn.Linear(latent_dim, d_model)
        else:
            self.head = build_token_head(head, d_model, vocab_size, **(head_kwargs or {}))
            self.embed = self.head.embed

    def positions(self, n_cond: int, device=None) -> torch.Tensor:
        grid = grid_positions(self.grid, device)
        return torch.cat([grid.new_zeros(n_cond, grid.shape[1]), grid])  # (n_cond + N, A)

    def inputs(self, cond: torch.Tensor, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """[cond, tokens with the masked ones replaced by the mask embedding]: [B, n_cond + N, D]."""
        embedded = self.embed(x)  # (B, N, D)
        tokens = torch.where(masked[..., None], self.mask_token.to(embedded.dtype), embedded)
        return torch.cat([cond, tokens], dim=1)

    @staticmethod
    def attention_mask(valid: torch.Tensor | None, n_cond: int) -> Dense | None:
        """None (full attention) without padding; else a per-sample mask hiding the padded keys."""
        if valid is None:
            return None
        keys = torch.cat([valid.new_ones(valid.shape[0], n_cond), valid], dim=1)  # (B, T)
        return Dense(keys[:, None, :].expand(-1, keys.shape[1], -1))  # (B, T, T)

    @staticmethod
    def random_ranks(valid: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, N] rank of each token in a random order that puts padding last."""
        keys = torch.rand(valid.shape, generator=generator, device=valid.device).masked_fill(~valid, 2.0)
        return keys.argsort(1).argsort(1)

    def check_continuous(self, tokens: torch.Tensor) -> None:
        self.check_tokens(tokens)
        if not self.continuous:
            return
        if not tokens.is_floating_point() or tokens.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"{self.name} models continuous tokens [B, *grid, {self.latent_dim}], got "
                f"{tuple(tokens.shape)} {tokens.dtype}; use a continuous tokenizer (e.g. kl_vae)"
            )

    def sample_masked(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, T] training mask: ceil(r K_b) of each row's valid tokens in a random order, r ~ MAR's
        truncated normal (one per batch, as in MAR); invalid tokens (padding) are never masked."""
        num_masked = (sample_mask_ratio(self.mask_min) * valid.sum(1)).ceil()  # (B,)
        return self.random_ranks(valid) < num_masked[:, None]

    def prepare(
        self, tokens: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor | None = None
    ) -> UnitBatch:
        """tokens [B, *grid, C] (continuous), cond [B, n_cond, D], optional padding mask valid [B, N] ->
        inputs [B, n_cond + N, D]."""
        self.check_continuous(tokens)
        x = tokens.flatten(1, len(self.grid))  # (B, N, C)
        mask = self.attention_mask(valid, cond.shape[1])  # None: bidirectional over every token
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if valid is None else valid.bool()
        masked = self.sample_masked(valid)  # (B, N)
        extras = {"n_cond": cond.shape[1], "masked": masked, "predicted": masked}
        positions = self.positions(cond.shape[1], x.device)
        return UnitBatch(self.inputs(cond, x, masked), positions, mask, x, extras)

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        predicted = batch.extras["predicted"]  # (B, T): the masked tokens the loss is about
        z = hidden[:, batch.extras["n_cond"] :][predicted]  # (M, D) their hidden states
        x = batch.targets[predicted]  # (M, C) latents, or (M, *token_shape) ids
        if not self.continuous:
            return {"loss": self.head.loss(z, x)}
        r = self.head_batch_mul
        return {"loss": self.head.loss(x.repeat(r, 1), z.repeat(r, 1))}

    @torch.no_grad()
    def generate(
        self,
        trunk: Trunk,
        cond: torch.Tensor,
        grid: tuple[int, ...],
        sampler: Sampler,
        valid: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid, C] in K bidirectional steps; with a padding
        mask valid [B, N] only the real tokens are generated (padding stays zero); the tokens of a
        `prefix` [B, k, *grid[1:], C] (the first frames or rows) are given, unmasked from the start."""
        self.check_grid(grid)
        b = cond.shape[0] // 2 if sampler.guided else cond.shape[0]
        padded = valid is not None
        valid = valid.bool().to(cond.device) if padded else torch.ones(b, self.seq_len, dtype=torch.bool)
        valid = valid.to(cond.device)
        x = torch.zeros(b, self.seq_len, *self.token_dims, device=cond.device, dtype=self.token_dtype)
        region = valid.clone()  # what to generate
        if prefix is not None:
            given = self.check_prefix(prefix, b)
            x[:, : given.shape[1]] = given.to(x.dtype)
            region[:, : given.shape[1]] = False
        state = (x, region.clone())  # tokens so far, and which are still masked
        generator = sampler.generator(cond.device)
        keys = valid if padded else None  # padding is never attended to
        self.unmask(trunk, cond, state, region, self.steps, sampler, generator, keys)
        return x.unflatten(1, self.grid)

    def decoding_layout(
        self, n_cond: int, length: int, keys: torch.Tensor | None, device=None
    ) -> tuple[torch.Tensor, Dense | None]:
        """Positions and attention mask of a generation pass over `[cond, length tokens]`."""
        return self.positions(n_cond, device), self.attention_mask(keys, n_cond)

    def unmask(
        self,
        trunk: Trunk,
        cond: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        region: torch.Tensor,
        steps: int,
        sampler: Sampler,
        generator: torch.Generator | None,
        keys: torch.Tensor | None = None,
    ) -> None:
        """Generate the tokens of `region` [B, T] in `steps` steps of the cosine schedule, in place in
        state = (x [B, T, C], masked [B, T]); tokens outside `region` are read as they are (masked or not).
        `keys` [B, T] restricts attention to those tokens (None: all; padding is hidden so)."""
        x, masked = state
        guided, device, n_cond = sampler.guided, cond.device, cond.shape[1]
        both = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)  # the null half reads the same
        positions, mask = self.decoding_layout(
            n_cond, x.shape[1], None if keys is None else both(keys), device
        )
        ranks = self.random_ranks(region, generator)  # (B, T): the region first, in a random order
        lengths = region.sum(1)  # K_b tokens to generate
        masked_now = lengths.tolist()
        for k in range(steps):
            hidden = trunk(self.inputs(cond, both(x), both(masked)), positions, mask)[:, n_cond:]
            keep = [masked_after(k, steps, n, m) for n, m in zip(lengths.tolist(), masked_now)]
            keep_t = torch.tensor(keep, device=device)
            reveal = masked & region & (ranks >= keep_t[:, None])  # the region's latest masked tokens
            if reveal.any():
                z = torch.cat([h[reveal] for h in hidden.chunk(2)]) if guided else hidden[reveal]
                revealed = ((lengths - keep_t) / lengths.clamp(min=1)).tolist()  # fraction after the step
                x[reveal] = self.sample_tokens(z, revealed, reveal.sum(1), sampler, generator)
            masked &= ~reveal
            masked_now = keep

    def sample_tokens(
        self,
        z: torch.Tensor,
        revealed: list[float],
        rows: torch.Tensor,
        sampler: Sampler,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Tokens for hidden states z [M or 2M (CFG), D]; `rows` [B] of them per image, whose revealed
        fraction after this step is `revealed` [B]: each token is guided at its own image's progress."""
        progress = torch.tensor(revealed, device=z.device).repeat_interleave(rows.to(z.device))  # (M,)
        if not self.continuous:  # a token head samples through the sampler
            return self.head.sample(z, sampler, progress, generator)
        scale = sampler.scales(progress) if sampler.guided else 1.0
        return self.head.sample(
            z, self.head_steps, scale, sampler.temperature, sampler.flow_solver, sampler.flow_noise, generator
        )

    @property
    def token_dims(self) -> tuple[int, ...]:
        """Shape of one token: (C,) latents or the token head's ids."""
        return (self.latent_dim,) if self.continuous else tuple(self.head.token_shape)

    @property
    def token_dtype(self) -> torch.dtype:
        return torch.float32 if self.continuous else torch.long

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.steps
