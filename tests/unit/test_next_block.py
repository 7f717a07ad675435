"""NextBlock (NBP): block shapes and order, the block-causal mask against its definition, targets one
block ahead, block size 1 equals next-token, cached generation equals full forward, steps = blocks."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit, grid_positions
from mmar.units.next_block import block_order, resolve_block

V, D = 19, 64


def setup(grid, block, n_axes=None):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_block", d_model=D, grid=grid, vocab_size=V, block=block).eval()
    torch.nn.init.normal_(unit.slot_embedding, std=0.02)  # not the zero start, to see it matters
    return trunk, unit, ClassCondition(10, D).eval()


def test_block_shapes_and_errors():
    assert resolve_block("row", (4, 6)) == (1, 6) and resolve_block("token", (4, 6)) == (1, 1)
    assert resolve_block("frame", (3, 4, 4)) == (1, 4, 4) and resolve_block([2, 3], (4, 6)) == (2, 3)
    with pytest.raises(ConfigError, match=r"block \[3, 3\] does not tile the token grid \[4, 6\]"):
        resolve_block([3, 3], (4, 6))
    with pytest.raises(ConfigError, match="needs a video grid"):
        resolve_block("frame", (4, 6))
    with pytest.raises(ConfigError, match="does not tile"):
        build_unit("next_block", d_model=D, grid=(4, 6), vocab_size=V, block=[2, 2, 2])


def test_block_order_groups_each_block_in_raster_order():
    order = block_order((4, 4), (2, 2))
    assert order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert torch.equal(block_order((3, 5), (1, 5)), torch.arange(15))  # rows: raster itself


@pytest.mark.parametrize("grid, block", [((4, 4), [2, 2]), ((3, 4), "row"), ((2, 2, 3), "frame")])
def test_mask_and_targets_follow_the_definition(grid, block):
    _, unit, cond = setup(grid, block)
    tokens, c = torch.randint(0, V, (2, *grid)), cond(torch.tensor([1, 2])).tokens
    batch = unit.prepare(tokens, c)
    n, s = unit.seq_len, unit.block_size
    assert batch.inputs.shape == (2, n, D) and batch.targets.shape == (2, n)
    # brute force: sequence slot p (after the single condition token) belongs to block p // S
    allowed = torch.tensor([[q // s >= k // s for k in range(n)] for q in range(n)])
    assert torch.equal(batch.mask.dense(n, n), allowed)
    order = unit.order
    assert torch.equal(batch.targets, tokens.flatten(1)[:, order])  # block-major targets
    coords = grid_positions(grid)
    for p in range(s, n):  # input slot p holds token p - S (block k - 1) and predicts token p (block k)
        torch.testing.assert_close(batch.inputs[:, p], unit.head.embed(tokens.flatten(1)[:, order[p - s]]))
        assert torch.equal(batch.positions[p], coords[order[p - s]])
    for j in range(s):  # start slots: the condition + a slot embedding, at the block-0 target positions
        torch.testing.assert_close(batch.inputs[:, j], c[:, 0] + unit.slot_embedding[j])
        assert torch.equal(batch.positions[j], coords[order[j]])


def test_block_size_one_is_next_token():
    trunk, unit, cond = setup((3, 4), "token")
    torch.nn.init.zeros_(unit.slot_embedding)
    next_token = build_unit("next_token", d_model=D, grid=(3, 4), vocab_size=V)
    next_token.load_state_dict(unit.state_dict(), strict=False)
    tokens, c = torch.randint(0, V, (3, 3, 4)), cond(torch.tensor([0, 4, 9])).tokens
    ours, theirs = unit.prepare(tokens, c), next_token.prepare(tokens, c)
    torch.testing.assert_close(ours.inputs, theirs.inputs, rtol=0, atol=0)
    assert torch.equal(ours.positions, theirs.positions)
    assert torch.equal(ours.mask.dense(12, 12), theirs.mask.dense(12, 12))
    loss = lambda u, b: u.loss(trunk(b.inputs, b.positions, b.mask), b)["loss"]
    torch.testing.assert_close(loss(unit, ours), loss(next_token, theirs), rtol=0, atol=0)


@pytest.mark.parametrize("grid, block", [((4, 4), [2, 2]), ((2, 2, 3), "frame")])
def test_cached_block_decoding_equals_the_full_forward(grid, block):
    trunk, unit, cond = setup(grid, block)
    tokens, c = torch.randint(0, V, (2, *grid)), cond(torch.tensor([3, 7])).tokens
    batch = unit.prepare(tokens, c)
    full = trunk(batch.inputs, batch.positions, batch.mask)  # (B, N, D)
    cache, s, steps = trunk.make_cache(2, unit.seq_len), unit.block_size, []
    for k in range(unit.num_blocks):  # one block per call, as generate feeds them
        sl = slice(k * s, (k + 1) * s)
        steps.append(trunk(batch.inputs[:, sl], batch.positions[sl], batch.mask, cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)

    sampler = Sampler(cfg_scale=1.5, top_k=4, seed=2)
    guided = cond.for_sampling(torch.tensor([3, 7]), sampler.guided).tokens
    cached = unit.generate(trunk, guided, grid, sampler)
    assert cached.shape == (2, *grid)
    assert torch.equal(cached, unit.generate(trunk, guided, grid, sampler, use_cache=False))


def test_greedy_generation_is_a_fixed_point_of_teacher_forcing():
    trunk, unit, cond = setup((4, 4), [2, 2])
    c = cond(torch.tensor([5])).tokens
    tokens = unit.generate(trunk, c, (4, 4), Sampler(temperature=0.0))
    batch = unit.prepare(tokens, c)
    logits = unit.head(trunk(batch.inputs, batch.positions, batch.mask))  # (1, N, V)
    assert torch.equal(logits.argmax(-1), batch.targets)  # each block is the argmax given the previous


@pytest.mark.parametrize(
    "grid, block, steps", [((16, 16), "row", 16), ((16, 16), [4, 4], 16), ((4, 8, 8), "frame", 4)]
)
def test_num_steps_is_the_number_of_blocks(grid, block, steps):
    unit = build_unit("next_block", d_model=D, grid=grid, vocab_size=V, block=block)
    assert unit.num_steps(grid) == steps
