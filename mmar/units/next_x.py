"""Next-X prediction with a flow head (xAR: Ren et al., 2025, "Beyond Next-Token: Next-X Prediction for
Autoregressive Visual Generation").

The continuous token grid is split into K entities of S tokens: a patch (one token), a k x k cell, a
subsample (every k-th row and column, k^2 entities), or the whole image. The sequence is
`[cond, X_0, ..., X_{K-1}]` under a block-causal mask over entities, and every entity enters noisy at its
own flow time (Noisy Context Learning): X_k^t = (1 - t_k) X_k + t_k eps with t_k from a logit-normal, its
tokens embedded together with t_k. The trunk's hidden state of each token of X_k conditions a per-token
flow head (AdaLN MLP) that predicts the velocity eps - x; the loss is the mean squared error over all
tokens. Generation integrates one entity at a time from noise with `flow_steps` Euler (or
Euler-Maruyama) steps, each a trunk pass over the current noisy entity against the KV cache of the
finished (clean, t = 0) ones, which is written together with the next entity's first step: K x
flow_steps trunk passes. Guidance mixes the head's velocities, its scale ramped over entities by the
sampler's schedule at progress k / K (xAR ramps linearly).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError
from mmar.heads.flow import FlowHead, integrate, timestep_embedding
from mmar.kernels import BlockCausal
from mmar.sampling import Sampler
from mmar.trunk import KVCache, Trunk
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions
from mmar.units.next_block import block_order

ENTITIES = ("patch", "cell", "subsample", "image")


def entity_groups(grid: tuple[int, ...], entity: str, size: int = 1) -> torch.Tensor:
    """[K, S] raster indices of the tokens of each entity, entities in generation order."""
    if len(grid) != 2:
        raise ConfigError(f"next_x entities are defined on image grids (H, W), got {grid}")
    h, w = grid
    if entity == "patch":
        return torch.arange(h * w)[:, None]
    if entity == "image":
        return torch.arange(h * w)[None]
    if entity not in ("cell", "subsample"):
        raise ConfigError(f"unknown entity '{entity}' for next_x; choose one of {ENTITIES}")
    if size < 1 or h % size or w % size:
        raise ConfigError(f"entity size {size} must divide the token grid {list(grid)} for entity='{entity}'")
    if entity == "cell":  # k x k cells in raster order
        return block_order(grid, (size, size)).view(-1, size * size)
    coords = grid_positions(grid)  # subsample: entity (i, j) holds the tokens with (h % k, w % k) = (i, j)
    phase = (coords[:, 0] % size) * size + coords[:, 1] % size  # (N,)
    return phase.argsort(stable=True).view(size * size, -1)


class NextX(PredictionUnit):
    name = "next_x"
    token_kinds = ("continuous",)

    def __init__(
        self,
        d_model: int,
        grid: tuple[int, ...],
        latent_dim: int,
        entity: str = "cell",
        size: int = 2,
        flow_steps: int = 16,
        head_width: int = 256,
        head_depth: int = 3,
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        """Args: d_model and grid from the trunk and tokenizer; latent_dim the tokens' channels; the
        entity kind and its size (cell side or subsampling factor); flow steps per entity; the head's
        width and depth; the logit-normal of training times."""
        super().__init__(d_model, grid)
        if flow_steps < 1:
            raise ConfigError(f"flow_steps={flow_steps} must be >= 1")
        self.latent_dim, self.flow_steps = latent_dim, flow_steps
        groups = entity_groups(self.grid, entity, size)  # (K, S)
        self.num_entities, self.entity_size = groups.shape
        self.register_buffer("order", groups.flatten(), persistent=False)  # (N,) entity-major raster ids
        self.embed = nn.Linear(latent_dim, d_model)
        self.time_embed = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.head = FlowHead(d_model, latent_dim, head_width, head_depth, t_mean, t_std)

    def layout(self, n_cond: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [n_cond + N, A] and entity ids [n_cond + N] of `[cond, X_0, ..., X_{K-1}]`."""
        grid = grid_positions(self.grid, device)[self.order.to(device)]
        positions = torch.cat([grid.new_zeros(n_cond, grid.shape[1]), grid])
        entities = torch.arange(self.num_entities, device=device).repeat_interleave(self.entity_size)
        return positions, torch.cat([torch.arange(-n_cond, 0, device=device), entities])

    def embed_noisy(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy tokens x_t [B, T, C] at times t [B, T] -> inputs [B, T, D]."""
        d = self.d_model
        return self.embed(x_t) + self.time_embed(timestep_embedding(t.flatten(), d).view(*t.shape, d))

    def prepare(self, tokens: torch.Tensor, cond: torch.Tensor) -> UnitBatch:
        """tokens [B, *grid, C] (continuous), cond [B, n_cond, D] -> inputs [B, n_cond + N, D]."""
        self.check_tokens(tokens)
        if not tokens.is_floating_point() or tokens.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"next_x models continuous tokens [B, *grid, {self.latent_dim}], got {tuple(tokens.shape)} "
                f"{tokens.dtype}; use a continuous tokenizer (e.g. kl_vae)"
            )
        x = tokens.flatten(1, len(self.grid))[:, self.order]  # (B, N, C) entity-major
        b = x.shape[0]
        t_entity = self.head.sample_times(b * self.num_entities, x.device).view(b, -1)  # (B, K)
        t = t_entity.repeat_interleave(self.entity_size, dim=1)  # (B, N): one time per entity
        eps = torch.randn_like(x)
        x_t = (1 - t[..., None]) * x + t[..., None] * eps  # Noisy Context Learning: every entity noisy
        inputs = torch.cat([cond, self.embed_noisy(x_t, t)], dim=1)
        positions, entities = self.layout(cond.shape[1], x.device)
        extras = {"n_cond": cond.shape[1], "x_t": x_t, "t": t}
        return UnitBatch(inputs, positions, BlockCausal(entities), eps - x, extras)

    def loss(self, hidden: torch.Tensor, batch: UnitBatch) -> dict[str, torch.Tensor]:
        z = hidden[:, batch.extras["n_cond"] :].flatten(0, 1)  # (B N, D)
        x_t, t = batch.extras["x_t"].flatten(0, 1), batch.extras["t"].flatten()
        return {"loss": F.mse_loss(self.head(x_t, t, z), batch.targets.flatten(0, 1))}

    @torch.no_grad()
    def generate(
        self,
        trunk: Trunk,
        cond: torch.Tensor,
        grid: tuple[int, ...],
        sampler: Sampler,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """cond [B or 2B (CFG), n_cond, D] -> tokens [B, *grid, C], one entity at a time."""
        self.check_grid(grid)
        guided, device = sampler.guided, cond.device
        b = cond.shape[0] // 2 if guided else cond.shape[0]
        positions, entities = self.layout(cond.shape[1], device)
        state = _Decoding(trunk, positions, BlockCausal(entities), guided, context=cond, pending=cond)
        if use_cache:
            state.cache = trunk.make_cache(cond.shape[0], len(entities), device, cond.dtype)
        generator = sampler.generator(device)
        done = []
        for k in range(self.num_entities):
            state.scale = sampler.scale_at(k / self.num_entities) if guided else 1.0
            x1 = sampler.temperature * torch.randn(
                b, self.entity_size, self.latent_dim, generator=generator, device=device
            )
            x = integrate(
                partial(self.velocity, state),
                x1,
                self.flow_steps,
                sampler.flow_solver,
                sampler.flow_noise,
                sampler.temperature,
                generator,
            )  # (B, S, C)
            done.append(x)
            clean = self.embed_noisy(
                state.both(x), torch.zeros(len(state.both(x)), self.entity_size, device=device)
            )
            state.pending, state.context = clean, torch.cat([state.context, clean], dim=1)
        ordered = torch.cat(done, dim=1)  # (B, N, C) entity-major
        tokens = torch.empty_like(ordered)
        tokens[:, self.order] = ordered
        return tokens.unflatten(1, self.grid)

    def velocity(self, state: _Decoding, x: torch.Tensor, t: float) -> torch.Tensor:
        """Guided velocity [B, S, C] of the current entity x [B, S, C] at flow time t: one trunk pass."""
        s, xs = self.entity_size, state.both(x)  # (B', S, C)
        current = self.embed_noisy(xs, torch.full(xs.shape[:2], t, device=x.device))
        if state.cache is not None:
            start = state.cache.length
            seq = current if state.pending is None else torch.cat([state.pending, current], dim=1)
            hidden = state.trunk(
                seq, state.positions[start : start + seq.shape[1]], state.mask, cache=state.cache
            )
            state.cache.length -= s  # keep only the finished entities: the noisy one is recomputed
            state.pending = None
        else:
            seq = torch.cat([state.context, current], dim=1)
            hidden = state.trunk(seq, state.positions[: seq.shape[1]], state.mask)
        flat = xs.flatten(0, 1)  # (B' S, C)
        v = self.head(flat, torch.full((len(flat),), t, device=x.device), hidden[:, -s:].flatten(0, 1))
        v = v.view(-1, s, self.latent_dim)  # (B', S, C)
        if not state.guided:
            return v
        v_c, v_u = v.chunk(2)
        return v_u + state.scale * (v_c - v_u)

    def num_steps(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return self.num_entities * self.flow_steps


@dataclass
class _Decoding:
    """What `NextX.generate` carries between flow steps: the trunk inputs so far and the KV cache."""

    trunk: Trunk
    positions: torch.Tensor
    mask: BlockCausal
    guided: bool
    context: torch.Tensor  # every finished input [B', n_cond + k S, D] (the uncached path)
    pending: torch.Tensor | None  # finished inputs not yet written to the cache
    cache: KVCache | None = None
    scale: float = 1.0

    def both(self, x: torch.Tensor) -> torch.Tensor:
        """The CFG batch reads the same tokens in its conditional and null halves."""
        return torch.cat([x, x]) if self.guided else x
