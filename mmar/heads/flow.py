"""A per-token flow-matching head (MAR's SimpleMLPAdaLN, Li et al. 2024, trained with the rectified-flow
objective of xAR, Ren et al. 2025) and the samplers that integrate it.

Convention (x data, eps ~ N(0, I), t in [0, 1], t = 1 is noise):

    x_t = (1 - t) x + t eps,    velocity target v = eps - x,    t ~ logit-normal(mean, std).

The head maps (x_t, t, z) to v, where z is the trunk's hidden state for the token. Sampling integrates
dx/dt = v from t = 1 to 0 on a uniform grid, with Euler steps, or Euler-Maruyama steps of the reverse SDE
with diffusion g(t)^2 = 2 gamma t that has the same marginals,

    x <- x - dt (v + gamma eps_hat) + sqrt(2 gamma t dt) n,    eps_hat = x + (1 - t) v,

(score = -eps_hat / t), the last step always plain Euler. Classifier-free guidance mixes the velocities
of the conditional and null halves of a batch that share their noise, v = v_u + s (v_c - v_u);
temperature scales the starting noise and the SDE noise (MAR's temperature).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of times t [N] in [0, 1] (scaled by 1000, as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs  # (N, half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class AdaLNBlock(nn.Module):
    """Residual MLP block modulated (shift, scale, gate) by the conditioning vector; identity at init."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """Velocity v(x_t, t, z) for one continuous token per row.

    Args:
        d_model: width of the conditioning hidden state z.
        latent_dim: channels C of a token.
        width: width of the MLP.
        depth: AdaLN residual blocks (MAR: 3 to 6).
        t_mean, t_std: the logit-normal distribution of training times.
    """

    def __init__(
        self,
        d_model: int,
        latent_dim: int,
        width: int = 256,
        depth: int = 3,
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        super().__init__()
        self.latent_dim, self.width, self.t_mean, self.t_std = latent_dim, width, t_mean, t_std
        self.input = nn.Linear(latent_dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(d_model, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, latent_dim)
        for layer in (self.final_ada, self.out):  # start by predicting zero velocity
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t [N, C], t [N], z [N, D] -> velocity [N, C]."""
        c = self.time(timestep_embedding(t, self.width)) + self.cond(z)  # (N, W)
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)

    def sample_times(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training times from the logit-normal: sigmoid(N(t_mean, t_std^2))."""
        normal = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.t_mean + self.t_std * normal)

    def loss(self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching loss of clean tokens x [N, C] given z [N, D] (times t [N] drawn if not given)."""
        t = self.sample_times(len(x), x.device) if t is None else t
        eps = torch.randn_like(x)
        x_t = (1 - t[:, None]) * x + t[:, None] * eps
        return F.mse_loss(self(x_t, t, z), eps - x)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        steps: int,
        cfg_scale: float | torch.Tensor = 1.0,
        temperature: float = 1.0,
        solver: str = "euler",
        noise: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Tokens [N, C] for z [N, D], or for the CFG batch z = [cond; null] [2N, D] when cfg_scale != 1
        (a float, or a tensor [N] of per-row scales, which always means the CFG batch)."""
        guided = isinstance(cfg_scale, torch.Tensor) or cfg_scale != 1.0
        n = len(z) // 2 if guided else len(z)
        scale = cfg_scale[:, None] if isinstance(cfg_scale, torch.Tensor) else cfg_scale

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            xs = torch.cat([x, x]) if guided else x  # both halves share the noise
            v = self(xs, torch.full((len(xs),), t, device=z.device), z)
            if not guided:
                return v
            v_c, v_u = v.chunk(2)
            return v_u + scale * (v_c - v_u)

        x1 = temperature * torch.randn(n, self.latent_dim, generator=generator, device=z.device)
        return integrate(velocity, x1, steps, solver, noise, temperature, generator)


def integrate(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    x1: torch.Tensor,
    steps: int,
    solver: str = "euler",
    noise: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from x1 at t = 1 down to t = 0 in `steps` uniform steps.

    "euler" is the ODE; "euler_maruyama" the reverse SDE of the module docstring with noise level
    gamma = `noise` (its fresh noise scaled by `temperature`); its last step is plain Euler.
    """
    x, dt = x1, 1.0 / steps
    for i in range(steps):
        t = 1.0 - i * dt
        v = velocity(x, t)
        if solver == "euler" or i == steps - 1:
            x = x - dt * v
        else:
            eps_hat = x + (1 - t) * v  # the noise the prediction implies
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x - dt * (v + noise * eps_hat) + temperature * math.sqrt(2 * noise * t * dt) * fresh
    return x
