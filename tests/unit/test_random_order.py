"""RandomOrder (RAR): the annealed permutation probability, identity order equals next-token, tokens and
positions permuted together with target-aware embeddings, and raster generation matching training."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit, grid_positions
from mmar.units.random_order import permute_probability, sample_orders

GRID, V, D = (3, 4), 17, 64


@pytest.fixture
def model():
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("random_order", d_model=D, grid=GRID, vocab_size=V).eval()
    return trunk, unit, ClassCondition(10, D).eval()


def test_permutation_probability_is_one_then_linear_to_zero():
    assert [permute_probability(p) for p in (0.0, 0.5, 0.625, 0.75, 1.0)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert permute_probability(0.3, 0.2, 0.4) == pytest.approx(0.5)


def test_orders_are_permutations_with_the_given_probability():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_orders(5, 12, 0.0, g), torch.arange(12).expand(5, 12))
    orders = sample_orders(2000, 12, 0.3, g)
    assert torch.equal(orders.sort(dim=1).values, torch.arange(12).expand(2000, 12))  # permutations
    permuted = (orders != torch.arange(12)).any(dim=1).float().mean()
    assert abs(permuted - 0.3) < 0.04


def test_identity_order_gives_the_next_token_loss(model):
    trunk, unit, cond = model
    next_token = build_unit("next_token", d_model=D, grid=GRID, vocab_size=V)
    next_token.load_state_dict(unit.state_dict(), strict=False)  # the same token head
    torch.nn.init.zeros_(unit.target_embedding.weight)  # RAR without its extra embedding
    tokens, c = torch.randint(0, V, (3, *GRID)), cond(torch.tensor([1, 5, 8])).tokens
    raster = torch.arange(12).expand(3, 12)
    ours, theirs = unit.prepare(tokens, c, orders=raster), next_token.prepare(tokens, c)
    torch.testing.assert_close(ours.inputs, theirs.inputs, rtol=0, atol=0)
    assert torch.equal(ours.positions, theirs.positions.expand(3, -1, -1)) and ours.mask == theirs.mask
    loss = lambda u, b: u.loss(trunk(b.inputs, b.positions, b.mask), b)["loss"]
    torch.testing.assert_close(loss(unit, ours), loss(next_token, theirs), rtol=0, atol=0)


def test_tokens_positions_and_targets_follow_the_permutation(model):
    _, unit, cond = model
    tokens, c = torch.randint(0, V, (2, *GRID)), cond(torch.tensor([0, 3])).tokens
    orders = torch.stack([torch.randperm(12), torch.randperm(12)])
    batch = unit.prepare(tokens, c, orders=orders)
    flat, grid, ta = tokens.flatten(1), grid_positions(GRID), unit.target_embedding.weight
    assert isinstance(batch.mask, Causal) and torch.equal(batch.targets, flat.gather(1, orders))
    for b in range(2):
        pi = orders[b]
        torch.testing.assert_close(batch.inputs[b, 0], c[b, 0] + ta[pi[0]])  # cond: where to start
        for i in range(11):  # token t_pi(i) at its own position, told that pi(i + 1) comes next
            torch.testing.assert_close(
                batch.inputs[b, 1 + i], unit.head.embed(flat[b, pi[i]]) + ta[pi[i + 1]]
            )
            assert torch.equal(batch.positions[b, 1 + i], grid[pi[i]])
        assert torch.equal(batch.positions[b, 0], torch.zeros(2, dtype=torch.long))


def test_training_permutes_until_annealed_and_evaluation_is_raster(model):
    _, unit, cond = model
    tokens, c = torch.randint(0, V, (64, *GRID)), cond(torch.zeros(64, dtype=torch.long)).tokens
    raster = torch.arange(12).expand(64, 12)
    assert torch.equal(unit.prepare(tokens, c).extras["orders"], raster)  # eval mode
    unit.train()
    unit.set_progress(0.1)
    assert (unit.prepare(tokens, c).extras["orders"] != raster).any(dim=1).all()  # r = 1
    unit.set_progress(0.8)
    assert torch.equal(unit.prepare(tokens, c).extras["orders"], raster)  # r = 0


def test_generation_feeds_what_raster_training_sees(model):
    trunk, unit, cond = model
    tokens, c = torch.randint(0, V, (2, *GRID)), cond(torch.tensor([2, 4])).tokens
    batch = unit.prepare(tokens, c)  # eval mode: raster order
    fed = [unit.add_target_embedding(c, 0, 1)]  # what generate feeds: cond, then one token per step
    fed += [
        unit.add_target_embedding(unit.head.embed(tokens.flatten(1)[:, i : i + 1]), 1 + i, 1)
        for i in range(11)
    ]
    torch.testing.assert_close(torch.cat(fed, dim=1), batch.inputs, rtol=0, atol=0)
    sampler = Sampler(cfg_scale=2.0, top_k=5, seed=1)
    guided = cond.for_sampling(torch.tensor([2, 4]), sampler.guided).tokens
    cached = unit.generate(trunk, guided, GRID, sampler)
    assert torch.equal(cached, unit.generate(trunk, guided, GRID, sampler, use_cache=False))
    assert cached.shape == (2, *GRID) and unit.num_steps(GRID) == 12


def test_bad_anneal_fractions_are_config_errors():
    with pytest.raises(ConfigError, match="anneal_start <= anneal_end"):
        build_unit("random_order", d_model=D, grid=GRID, vocab_size=V, anneal_start=0.8, anneal_end=0.2)
