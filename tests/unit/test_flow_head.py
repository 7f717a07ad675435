"""Flow head: the samplers integrate known velocity fields to their analytic end points, CFG mixes the
velocities of halves that share their noise, and the flow-matching loss learns a conditional density."""

import math

import pytest
import torch

from mmar.heads.flow import FlowHead, integrate


def gaussian_velocity(mu: float, s: float):
    """Exact velocity E[eps - x | x_t] for data x ~ N(mu, s^2) on the path x_t = (1 - t) x + t eps."""

    def v(x, t):
        var = (1 - t) ** 2 * s**2 + t**2
        resid = x - (1 - t) * mu
        return t / var * resid - (mu + (1 - t) * s**2 / var * resid)

    return v


@pytest.mark.parametrize("solver", ["euler", "euler_maruyama"])
def test_a_point_mass_is_reached_exactly(solver):
    x0 = torch.tensor([[1.5, -2.0, 0.25]])
    x1 = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    velocity = lambda x, t: (x - x0) / t  # straight paths to x0
    out = integrate(velocity, x1, 7, solver, noise=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", ["euler", "euler_maruyama"])
def test_gaussian_data_is_recovered(solver):
    mu, s = 2.0, 0.5
    x1 = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = integrate(gaussian_velocity(mu, s), x1, 400, solver, generator=torch.Generator().manual_seed(2))
    assert abs(out.mean().item() - mu) < 0.02 and abs(out.std().item() - s) < 0.02


class ConstantHead(FlowHead):
    """Velocity = the first C entries of z: known, so guided sampling has a closed form."""

    def forward(self, x_t, t, z):
        return z[:, : self.latent_dim].expand_as(x_t)


def test_cfg_mixes_velocities_of_halves_sharing_noise():
    head = ConstantHead(d_model=4, latent_dim=2)
    v_c, v_u = torch.tensor([[1.0, 2.0, 0, 0]]), torch.tensor([[0.5, -1.0, 0, 0]])
    guided = head.sample(
        torch.cat([v_c, v_u]), steps=5, cfg_scale=3.0, generator=torch.Generator().manual_seed(4)
    )
    x1 = torch.randn(1, 2, generator=torch.Generator().manual_seed(4))  # the same starting noise
    torch.testing.assert_close(guided, x1 - (v_u + 3.0 * (v_c - v_u))[:, :2])
    cold = head.sample(v_c, steps=5, temperature=0.0)
    torch.testing.assert_close(cold, -v_c[:, :2])  # temperature 0: no starting noise


def test_training_times_are_logit_normal():
    head = FlowHead(d_model=4, latent_dim=2, t_mean=-0.5, t_std=0.8)
    t = head.sample_times(50_000, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() + 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02


def test_flow_matching_learns_a_conditional_density():
    torch.manual_seed(0)
    head = FlowHead(d_model=2, latent_dim=1, width=64, depth=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(250):
        z = torch.randint(0, 2, (256,)).float() * 2 - 1  # the condition: -1 or +1
        x = 2 * z[:, None] + 0.2 * torch.randn(256, 1)  # data N(2 z, 0.2^2)
        loss = head.loss(x, torch.stack([z, torch.ones_like(z)], 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    zs = torch.tensor([[1.0, 1.0]] * 500 + [[-1.0, 1.0]] * 500)
    out = head.sample(zs, steps=20, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert abs(out[:500].mean() - 2) < 0.2 and abs(out[500:].mean() + 2) < 0.2
    assert out[:500].std() < 0.5 and math.isfinite(loss.item())
