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

`skip_masked` (mmar's option; off by default, which is MAR's model above) drops from each trunk pass
the masked tokens that the step does not predict: a pass reads `[cond, known tokens, mask embeddings at
the tokens this step reveals]`, each at its true grid position, and nothing marks the others. At 16 x 16
tokens in 8 steps the passes hold 5, 20, 44, ..., 256 tokens instead of 8 x 256. Training then draws
exactly the states generation meets: a step k (one per batch, with probability proportional to the
tokens it reveals in the batch, so every generated token weighs the same), the tokens masked before it
and the ones it reveals, in a random order, from each row's own schedule; the other masked tokens leave
the sequence and the loss covers the revealed ones only. This replaces MAR's mask ratio (`mask_min`),
and the sequences and the flow head's batch shrink in training too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.heads import build_token_head
from mmar.heads.flow import FlowHead
from mmar.kernels import Dense, Mask
from mmar.sampling import Sampler
from mmar.trunk import Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions


def masked_after(step: int, steps: int, n: int, masked_now: int) -> int:
    """Tokens still masked after `step` (0-based) of `steps`: MAR's cosine schedule with its clamps."""
    if step >= steps - 1:
        return 0
    keep = math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps))
    return max(1, min(masked_now - 1, keep))


def masked_counts(steps: int, n: int) -> list[int]:
    """Tokens masked before each of the `steps` steps that generate n tokens, then after the last:
    [n, ..., 0] (steps + 1 counts, as `MaskedAR.unmask` runs them; an empty row stays at 0)."""
    counts = [n]
    for k in range(steps):
        counts.append(min(counts[-1], masked_after(k, steps, n, counts[-1])))
    return counts


def select(seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of each row's True entries of seen [B, T], in order: index [B, L] (L the most in a
    row; a shorter row ends with filler columns) and real [B, L] (False at the filler)."""
    counts = seen.sum(1)  # (B,)
    length = int(counts.max()) if len(counts) else 0
    index = (~seen).to(torch.uint8).argsort(dim=1, stable=True)[:, :length]  # (B, L) True columns first
    return index, torch.arange(length, device=seen.device) < counts[:, None]


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
        skip_masked: bool = False,
    ):
        """Args: d_model and grid from the trunk and tokenizer; latent_dim the tokens' channels (continuous)
        or vocab_size (discrete); `head` "flow" (continuous) or a token head of `mmar.heads.TOKEN_HEADS`
        for discrete tokens (e.g. TokenBridge's "channel_ar", built with `head_kwargs`); `steps` the
        generation steps K; the flow head's width, depth (AdaLN blocks), integration steps and batch
        repetition; `mask_min` the lower end of the mask ratio; the logit-normal of training times;
        `skip_masked`: passes leave out the masked tokens a step does not predict, in training and
        generation alike (module docstring); False is MAR's model."""
        super().__init__(d_model, grid, vocab_size)
        if steps < 1 or head_steps < 1 or head_batch_mul < 1 or not 0 < mask_min <= 1:
            raise ConfigError(
                f"masked_ar needs steps, head_steps, head_batch_mul >= 1 and 0 < mask_min <= 1 (got {steps}, "
                f"{head_steps}, {head_batch_mul}, {mask_min})"
            )
        if skip_masked and mask_min != 0.7:
            raise ConfigError(
                f"masked_ar with skip_masked trains on the generation schedule's states, so "
                f"mask_min={mask_min} would be ignored; drop mask_min or skip_masked"
            )
        self.skip_masked = skip_masked
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

    def sample_step(self, valid: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """skip_masked's training state: the tokens masked [B, T] before a generation step and those it
        predicts [B, T]. The step is one per batch, drawn with probability proportional to the tokens it
        reveals in the batch; each row runs `steps` steps over its own valid tokens in a random order."""
        lengths = valid.sum(1).tolist()
        counts = {n: masked_counts(steps, n) for n in set(lengths)}
        per_row = torch.tensor([counts[n] for n in lengths], device=valid.device)  # (B, steps + 1)
        revealed = (per_row[:, :-1] - per_row[:, 1:]).sum(0)  # (steps,) tokens each step reveals
        k = int(torch.multinomial(revealed.double(), 1)) if revealed.any() else 0
        ranks = self.random_ranks(valid)  # (B, T) padding last
        masked = (ranks < per_row[:, k, None]) & valid
        return masked, masked & (ranks >= per_row[:, k + 1, None])

    def skip_layout(
        self,
        cond: torch.Tensor,
        x: torch.Tensor,
        masked: torch.Tensor,
        seen: torch.Tensor,
        positions: torch.Tensor,
        mask: Mask | None,
    ) -> tuple[torch.Tensor, torch.Tensor, Dense | None, torch.Tensor, torch.Tensor]:
        """A skip_masked pass: the layout `[cond, all T tokens]` (x [B, T, ...], masked [B, T], positions
        [n_cond + T, A], mask) cut to `[cond, the seen tokens]` (seen [B, T]) -> inputs [B, n_cond + L, D],
        positions [B, n_cond + L, A], mask (None where every row is full and the layout had none), and
        `select`'s index and real [B, L]. Training and generation both build their passes here."""
        index, real = select(seen)  # (B, L)
        b, n_cond, t = len(index), cond.shape[1], seen.shape[1]
        rows = torch.arange(b, device=index.device)[:, None]
        cols = torch.cat([torch.arange(n_cond, device=index.device).expand(b, -1), n_cond + index], 1)
        inputs = self.inputs(cond, x, masked)[rows, cols]  # (B, n_cond + L, D)
        positions = positions.expand(b, -1, -1)[rows, cols]  # (B, n_cond + L, A)
        if mask is None and bool(real.all()):
            return inputs, positions, None, index, real
        allowed = torch.cat([real.new_ones(b, n_cond), real], 1)[:, None, :]  # (B, 1, n_cond + L) keys
        if mask is not None:
            dense = mask.dense(n_cond + t, n_cond + t, device=index.device).expand(b, -1, -1)  # (B, T', T')
            allowed = allowed & dense[rows[..., None], cols[:, :, None], cols[:, None, :]]
        return inputs, positions, Dense(allowed.expand(-1, cols.shape[1], -1)), index, real

    def skip_batch(
        self,
        cond: torch.Tensor,
        x: torch.Tensor,
        masked: torch.Tensor,
        predicted: torch.Tensor,
        valid: torch.Tensor,
        positions: torch.Tensor,
        mask: Mask | None = None,
    ) -> UnitBatch:
        """skip_masked's training sequence: `[cond, known valid tokens, the predicted ones]` (x [B, T, ...],
        masked, predicted, valid [B, T]), the layout of the generation pass in that state."""
        seen = (~masked & valid) | predicted  # (B, T) the other masked tokens and padding leave
        inputs, positions, mask, index, real = self.skip_layout(cond, x, masked, seen, positions, mask)
        rows = torch.arange(len(index), device=index.device)[:, None]
        extras = {
            "n_cond": cond.shape[1],
            "masked": masked[rows, index] & real,  # (B, L)
            "predicted": predicted[rows, index] & real,
            "index": index,  # each input's column in the full layout
        }
        return UnitBatch(inputs, positions, mask, x[rows, index], extras)

    def prepare(
        self, tokens: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor | None = None
    ) -> UnitBatch:
        """tokens [B, *grid, C] (continuous), cond [B, n_cond, D], optional padding mask valid [B, N] ->
        inputs [B, n_cond + N, D] (skip_masked: [B, n_cond + L, D], the known and predicted tokens)."""
        self.check_continuous(tokens)
        x = tokens.flatten(1, len(self.grid))  # (B, N, C)
        mask = None if self.skip_masked else self.attention_mask(valid, cond.shape[1])  # None: bidirectional
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if valid is None else valid.bool()
        if self.skip_masked:  # padding leaves the sequence with the masked tokens the step does not predict
            masked, predicted = self.sample_step(valid, self.steps)  # (B, N) each
            return self.skip_batch(cond, x, masked, predicted, valid, self.positions(cond.shape[1], x.device))
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
        state = (x [B, T, C], masked [B, T]); tokens outside `region` are read as they are (masked or not;
        with skip_masked a pass reads the unmasked ones and those it predicts). `keys` [B, T] restricts
        attention to those tokens (None: all; padding is hidden so, or left out with skip_masked)."""
        x, masked = state
        guided, device, n_cond = sampler.guided, cond.device, cond.shape[1]
        both = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)  # the null half reads the same
        skip = self.skip_masked
        positions, mask = self.decoding_layout(
            n_cond, x.shape[1], None if keys is None or skip else both(keys), device
        )
        ranks = self.random_ranks(region, generator)  # (B, T): the region first, in a random order
        lengths = region.sum(1)  # K_b tokens to generate
        masked_now = lengths.tolist()
        for k in range(steps):
            keep = [masked_after(k, steps, n, m) for n, m in zip(lengths.tolist(), masked_now)]
            keep_t = torch.tensor(keep, device=device)
            reveal = masked & region & (ranks >= keep_t[:, None])  # the region's latest masked tokens
            if skip:  # the pass reads the known tokens and those it reveals, nothing else
                seen = (~masked if keys is None else ~masked & keys) | reveal  # (B, T)
                inputs, places, allowed, index, _ = self.skip_layout(
                    cond, both(x), both(masked), both(seen), positions, mask
                )
                hidden = trunk(inputs, places, allowed)[:, n_cond:]  # (B', L, D)
                at = both(reveal).gather(1, index)  # (B', L): where the revealed tokens sit
            else:
                hidden = trunk(self.inputs(cond, both(x), both(masked)), positions, mask)[:, n_cond:]
                at = both(reveal)  # (B', T)
            if reveal.any():
                z = hidden[at]  # (M or 2M, D): the rows of the conditional half, then of the null half
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
