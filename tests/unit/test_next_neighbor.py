"""NextNeighbor (NAR): the proximity mask against its definition, dimension-oriented heads and their
loss, averaged logits, diagonal-wise cached decoding equal to the full forward, 2n - 1 steps."""

import pytest
import torch
import torch.nn.functional as F

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.kernels import BlockCausal
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit, grid_positions

V, D = 13, 64


def setup(grid):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_neighbor", d_model=D, grid=grid, vocab_size=V).eval()
    for layer in unit.axis_layers:  # leave the identity start, so that the heads differ
        torch.nn.init.normal_(layer.mlp[-1].weight, std=0.02)
    return trunk, unit, ClassCondition(10, D).eval()


@pytest.mark.parametrize("grid", [(3, 4), (2, 3, 3)])
def test_proximity_mask_matches_its_definition(grid):
    _, unit, cond = setup(grid)
    batch = unit.prepare(torch.randint(0, V, (1, *grid)), cond(torch.tensor([0])).tokens)
    coords, n = grid_positions(grid).tolist(), unit.seq_len
    expected = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    expected[:, 0] = True  # everything sees the condition; it sees only itself
    for q in range(n):
        for k in range(n):
            expected[1 + q, 1 + k] = sum(coords[k]) <= sum(coords[q])
    assert torch.equal(batch.mask.dense(n + 1, n + 1), expected)


@pytest.mark.parametrize("grid, steps", [((16, 16), 31), ((8, 8), 15), ((3, 5), 7), ((4, 8, 8), 18)])
def test_num_steps_follows_the_paper(grid, steps):
    assert build_unit("next_neighbor", d_model=D, grid=grid, vocab_size=V).num_steps(grid) == steps


def test_loss_is_the_mean_over_every_neighbour_pair():
    trunk, unit, cond = setup((3, 4))
    tokens, c = torch.randint(0, V, (2, 3, 4)), cond(torch.tensor([1, 6])).tokens
    batch = unit.prepare(tokens, c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    terms = [F.cross_entropy(unit.head(hidden[:, 0]), tokens[:, 0, 0], reduction="none")]
    for h in range(3):
        for w in range(4):
            src = hidden[:, 1 + 4 * h + w]
            if w < 3:  # right neighbour: the shared head
                terms.append(F.cross_entropy(unit.head(src), tokens[:, h, w + 1], reduction="none"))
            if h < 2:  # below neighbour: its own head layer
                logits = unit.head(unit.axis_layers[0](src))
                terms.append(F.cross_entropy(logits, tokens[:, h + 1, w], reduction="none"))
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(unit.loss(hidden, batch)["loss"], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid", [(4, 4), (2, 3, 3)])
def test_diagonal_cached_decoding_equals_the_full_forward(grid):
    trunk, unit, cond = setup(grid)
    tokens, c = torch.randint(0, V, (2, *grid)), cond(torch.tensor([2, 8])).tokens
    batch = unit.prepare(tokens, c)
    full = trunk(batch.inputs, batch.positions, batch.mask)[:, 1:]  # (B, N, D) raster order
    steps = unit.num_steps(grid)
    order = torch.cat([unit.diagonal(d) for d in range(steps)])
    levels = torch.cat([torch.tensor([-1]), unit.levels[order]])
    mask, cache = BlockCausal(levels), trunk.make_cache(2, 1 + unit.seq_len)
    trunk(c, batch.positions[:1], mask, cache=cache)
    for d in range(steps):  # feed one anti-diagonal per call, in that order
        diag = unit.diagonal(d)
        hidden = trunk(batch.inputs[:, 1 + diag], batch.positions[1 + diag], mask, cache=cache)
        torch.testing.assert_close(hidden, full[:, diag], atol=1e-5, rtol=0)


@pytest.mark.parametrize("grid", [(4, 4), (2, 3, 3)])
def test_greedy_generation_is_the_argmax_of_averaged_teacher_forced_logits(grid):
    trunk, unit, cond = setup(grid)
    c = cond(torch.tensor([4, 9])).tokens
    tokens = unit.generate(trunk, c, grid, Sampler(temperature=0.0))
    batch = unit.prepare(tokens, c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)[:, 1:]  # (B, N, D)
    coords, strides, flat = grid_positions(grid), unit.strides, tokens.flatten(1)
    for p in range(1, unit.seq_len):  # brute force: mean of the heads of every predecessor of p
        logits = [
            unit.head(unit.axis_hidden(hidden[:, p - strides[a]], a))
            for a in range(len(grid))
            if coords[p, a] > 0
        ]
        assert torch.equal(torch.stack(logits).mean(0).argmax(-1), flat[:, p]), p
    sampler = Sampler(cfg_scale=2.0, top_k=3, seed=5)
    guided = cond.for_sampling(torch.tensor([4, 9]), sampler.guided).tokens
    assert torch.equal(
        unit.generate(trunk, guided, grid, sampler),
        unit.generate(trunk, guided, grid, sampler, use_cache=False),
    )


def test_errors():
    with pytest.raises(ConfigError, match=r"image .* or video .* grid"):
        build_unit("next_neighbor", d_model=D, grid=(16,), vocab_size=V)
    _, unit, cond = setup((2, 2))
    with pytest.raises(ConfigError, match="one id per grid cell"):
        unit.prepare(torch.zeros(1, 2, 2, 4, dtype=torch.long), cond(torch.tensor([0])).tokens)
