"""Next-X prediction with a flow head (xAR: Ren et al., 2025, "Beyond Next-Token: Next-X Prediction for
Autoregressive Visual Generation").

The continuous token grid is split into K entities: a patch (one token), a k x k cell, a subsample
(every k-th row and column, k^2 entities), the whole image, or a scale (the latent grid area-downsampled
to each of `scales` sides, coarse to fine, as in next-scale prediction; the finest scale is the output,
its tokens placed at the centres of the cells they cover for RoPE). The sequence is
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

ENTITIES = ("patch", "cell", "subsample", "image", "scale")


def entity_groups(grid: tuple[int, ...], entity: str, size: int = 1) -> torch.Tensor:
    """[K, S] raster indices of the tokens of each entity, entities in generation order."""
    if len(grid) != 2:
        raise ConfigError(f"next_x entities are defined on image grids (H, W), got {grid}")
    h, w = grid
    if entity == "patch":
        return torch.arange(h * w)[:, None]
    if entity == "image":
        return torch.arange(h * w)[None]
    if entity == "scale":
        raise ConfigError("scale entities differ in size: see scale_sides (NextX handles them itself)")
    if entity not in ("cell", "subsample"):
        raise ConfigError(f"unknown entity '{entity}' for next_x; choose one of {ENTITIES}")
    if size < 1 or h % size or w % size:
        raise ConfigError(f"entity size {size} must divide the token grid {list(grid)} for entity='{entity}'")
    if entity == "cell":  # k x k cells in raster order
        return block_order(grid, (size, size)).view(-1, size * size)
    coords = grid_positions(grid)  # subsample: entity (i, j) holds the tokens with (h % k, w % k) = (i, j)
    phase = (coords[:, 0] % size) * size + coords[:, 1] % size  # (N,)
    return phase.argsort(stable=True).view(size * size, -1)


def scale_sides(grid: tuple[int, ...], scales: list[int] | None) -> list[tuple[int, int]]:
    """(h, w) of each scale entity, coarse to fine; `scales` are heights (default 1, 2, 4, ..., H)."""
    if len(grid) != 2:
        raise ConfigError(f"next_x entities are defined on image grids (H, W), got {grid}")
    h, w = grid
    if scales is None:
        scales = [2**i for i in range(h.bit_length()) if 2**i < h and h % 2**i == 0] + [h]
    bad = [s for s in scales if s < 1 or h % s or (s * w) % h]
    if bad or list(scales) != sorted(set(scales)) or scales[-1] != h:
        raise ConfigError(
            f"scales {list(scales)} must increase to the grid height {h}, each dividing it (and H/s dividing "
            f"the width {w}); e.g. {[2**i for i in range(h.bit_length()) if h % 2**i == 0]}"
        )
    return [(s, s * w // h) for s in scales]


def cell_centres(side: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Full-grid coordinates [h w, 2] (float) of the centres of a coarse (h, w) grid's cells."""
    axes = [(torch.arange(m) + 0.5) * (n / m) - 0.5 for m, n in zip(side, grid)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)


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
        scales: list[int] | None = None,
        flow_steps: int = 16,
        head_width: int = 256,
        head_depth: int = 3,
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        """Args: d_model and grid from the trunk and tokenizer; latent_dim the tokens' channels; the
        entity kind and its size (cell side or subsampling factor) or, for "scale", the scale heights;
        flow steps per entity; the head's width and depth; the logit-normal of training times."""
        super().__init__(d_model, grid)
        if flow_steps < 1:
            raise ConfigError(f"flow_steps={flow_steps} must be >= 1")
        self.latent_dim, self.flow_steps, self.entity = latent_dim, flow_steps, entity
        if entity == "scale":
            self.sides = scale_sides(self.grid, scales)
            self.sizes = [h * w for h, w in self.sides]
            centres = torch.cat([cell_centres(side, self.grid) for side in self.sides])
        else:
            groups = entity_groups(self.grid, entity, size)  # (K, S)
            self.sizes = [groups.shape[1]] * groups.shape[0]
            self.register_buffer("order", groups.flatten(), persistent=False)  # (N,) entity-major raster ids
            centres = grid_positions(self.grid)[groups.flatten()]
        self.num_entities = len(self.sizes)
        self.register_buffer("centres", centres, persistent=False)  # (L, 2) RoPE position of each input
        self.embed = nn.Linear(latent_dim, d_model)
        self.time_embed = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.head = FlowHead(d_model, latent_dim, head_width, head_depth, t_mean, t_std)

    def layout(self, n_cond: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [n_cond + L, A] and entity ids [n_cond + L] of `[cond, X_0, ..., X_{K-1}]`."""
        grid = self.centres.to(device)
        positions = torch.cat([grid.new_zeros(n_cond, grid.shape[1]), grid])
        sizes = torch.tensor(self.sizes, device=device)
        entities = torch.arange(self.num_entities, device=device).repeat_interleave(sizes)
        return positions, torch.cat([torch.arange(-n_cond, 0, device=device), entities])

    def to_entities(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, *grid, C] -> the entities' tokens [B, L, C], entity-major."""
        if self.entity != "scale":
            return tokens.flatten(1, 2)[:, self.order]
        image = tokens.permute(0, 3, 1, 2)  # (B, C, H, W)
        scaled = [F.interpolate(image, size=side, mode="area") for side in self.sides]
        return torch.cat([x.flatten(2).transpose(1, 2) for x in scaled], dim=1)

    def from_entities(self, entities: torch.Tensor) -> torch.Tensor:
        """The generated entities [B, L, C] -> tokens [B, *grid, C] (for scales: the finest one)."""
        if self.entity == "scale":
            return entities[:, -self.sizes[-1] :].unflatten(1, self.grid)
        tokens = torch.empty_like(entities)
        tokens[:, self.order] = entities
        return tokens.unflatten(1, self.grid)

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
        x = self.to_entities(tokens)  # (B, L, C) entity-major
        b = x.shape[0]
        t_entity = self.head.sample_times(b * self.num_entities, x.device).view(b, -1)  # (B, K)
        sizes = torch.tensor(self.sizes, device=x.device)
        t = t_entity.repeat_interleave(sizes, dim=1)  # (B, L): one time per entity
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
        for k, size in enumerate(self.sizes):
            state.scale = sampler.scale_at(k / self.num_entities) if guided else 1.0
            x1 = torch.randn(b, size, self.latent_dim, generator=generator, device=device)
            x1 = sampler.temperature * x1
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
            clean = self.embed_noisy(state.both(x), torch.zeros(len(state.both(x)), size, device=device))
            state.pending, state.context = clean, torch.cat([state.context, clean], dim=1)
        return self.from_entities(torch.cat(done, dim=1))

    def velocity(self, state: _Decoding, x: torch.Tensor, t: float) -> torch.Tensor:
        """Guided velocity [B, S, C] of the current entity x [B, S, C] at flow time t: one trunk pass."""
        s, xs = x.shape[1], state.both(x)  # (B', S, C)
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
