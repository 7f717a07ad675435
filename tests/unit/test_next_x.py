"""NextX (xAR): entities partition the grid, block-causal mask over entities, Noisy Context Learning
targets, cached entity decoding equal to uncached, entities x flow steps trunk passes."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.next_x import entity_groups

C, D = 3, 64


def setup(grid=(4, 4), **kwargs):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_x", d_model=D, grid=grid, latent_dim=C, head_width=32, head_depth=1, **kwargs)
    for p in unit.head.parameters():  # leave the zero-velocity start so sampling depends on the trunk
        torch.nn.init.normal_(p, std=0.1)
    return trunk, unit.eval(), ClassCondition(10, D).eval()


def test_entities_partition_the_grid():
    assert entity_groups((4, 4), "cell", 2).tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    assert entity_groups((4, 4), "subsample", 2).tolist() == [
        [0, 2, 8, 10],
        [1, 3, 9, 11],
        [4, 6, 12, 14],
        [5, 7, 13, 15],
    ]
    assert entity_groups((4, 4), "patch").shape == (16, 1) and entity_groups((4, 4), "image").shape == (1, 16)
    for entity, size in [("cell", 4), ("subsample", 4), ("cell", 1)]:
        assert sorted(entity_groups((8, 8), entity, size).flatten().tolist()) == list(range(64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"entity": "cell", "size": 3}, r"entity size 3 must divide the token grid \[4, 4\]"),
        ({"entity": "pyramid"}, r"unknown entity 'pyramid'.*patch.*cell.*subsample.*image.*scale"),
        ({"entity": "scale", "scales": [1, 3, 4]}, r"scales \[1, 3, 4\] must increase to the grid height 4"),
        ({"flow_steps": 0}, r"flow_steps=0 must be >= 1"),
    ],
)
def test_bad_entities_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        setup(**kwargs)


def test_noisy_context_inputs_targets_and_mask():
    trunk, unit, cond = setup(entity="cell", size=2)
    x, c = torch.randn(2, 4, 4, C), cond(torch.tensor([1, 2])).tokens
    batch = unit.prepare(x, c)
    t, x_t = batch.extras["t"], batch.extras["x_t"]  # (B, N), (B, N, C) entity-major
    assert (t.view(2, 4, 4) == t.view(2, 4, 4)[:, :, :1]).all()  # one time per entity
    assert t.unique().numel() > 4  # ... drawn per sample and entity
    clean = x.flatten(1, 2)[:, unit.order]
    eps = (x_t - (1 - t[..., None]) * clean) / t[..., None]
    torch.testing.assert_close(batch.targets, eps - clean, atol=1e-4, rtol=0)  # velocity target eps - x
    ent = [-1] + [k // 4 for k in range(16)]  # brute force: entity of each sequence position
    expected = torch.tensor([[ent[k] <= ent[q] for k in range(17)] for q in range(17)])
    assert torch.equal(batch.mask.dense(17, 17), expected)
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("solver", ["euler", "euler_maruyama"])
def test_cached_entity_decoding_equals_uncached_and_counts_passes(solver):
    trunk, unit, cond = setup(entity="subsample", size=2, flow_steps=3)
    sampler = Sampler(cfg_scale=2.0, cfg_schedule="linear", seed=3, flow_solver=solver)
    guided = cond.for_sampling(torch.tensor([4, 6]), True).tokens
    calls = []
    trunk.register_forward_hook(lambda *_: calls.append(1))
    cached = unit.generate(trunk, guided, (4, 4), sampler)
    assert len(calls) == unit.num_steps((4, 4)) == 4 * 3  # entities x flow steps
    uncached = unit.generate(trunk, guided, (4, 4), sampler, use_cache=False)
    assert cached.shape == (2, 4, 4, C)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)


def test_num_steps_follows_the_paper():
    unit = build_unit("next_x", d_model=D, grid=(16, 16), latent_dim=C, entity="cell", size=8, flow_steps=25)
    assert unit.num_entities == 4 and unit.num_steps((16, 16)) == 4 * 25


def test_discrete_tokens_are_rejected():
    _, unit, cond = setup()
    with pytest.raises(ConfigError, match="continuous tokens"):
        unit.prepare(torch.zeros(1, 4, 4, dtype=torch.long), cond(torch.tensor([0])).tokens)


def test_scale_entities_are_area_pyramids_at_cell_centres():
    trunk, unit, cond = setup(entity="scale")  # 4 x 4 grid: scales 1, 2, 4
    assert unit.sizes == [1, 4, 16] and unit.num_steps((4, 4)) == 3 * unit.flow_steps
    x = torch.randn(2, 4, 4, C)
    seq = unit.to_entities(x)  # (B, 21, C)
    torch.testing.assert_close(seq[:, 0], x.mean(dim=(1, 2)))
    torch.testing.assert_close(seq[:, 1], x[:, :2, :2].mean(dim=(1, 2)))  # top-left 2 x 2 cell
    torch.testing.assert_close(seq[:, 5:], x.flatten(1, 2))
    positions, entities = unit.layout(1)
    assert positions[1].tolist() == [1.5, 1.5] and positions[2].tolist() == [0.5, 0.5]
    assert positions[-1].tolist() == [3.0, 3.0]
    assert entities.tolist() == [-1] + [0] + [1] * 4 + [2] * 16
    batch = unit.prepare(x, cond(torch.tensor([1, 2])).tokens)
    assert batch.inputs.shape[1] == 22 and batch.targets.shape == (2, 21, C)
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert torch.isfinite(loss)


def test_scale_decoding_cached_equals_uncached():
    trunk, unit, cond = setup(entity="scale", scales=[2, 4], flow_steps=2)
    sampler = Sampler(cfg_scale=1.5, cfg_schedule="linear", seed=0)
    guided = cond.for_sampling(torch.tensor([3]), True).tokens
    calls = []
    trunk.register_forward_hook(lambda *_: calls.append(1))
    cached = unit.generate(trunk, guided, (4, 4), sampler)
    assert len(calls) == unit.num_steps((4, 4)) == 2 * 2
    uncached = unit.generate(trunk, guided, (4, 4), sampler, use_cache=False)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)
    assert cached.shape == (1, 4, 4, C)
