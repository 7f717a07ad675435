"""Hi-MAR: pivots are window averages at the windows' centres, each training sample is in one phase, and
generation makes the pivots first (pivot_steps), then the dense tokens (steps)."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit

GRID, C, D = (4, 4), 3, 64


def setup(**kwargs):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    small = {"head_width": 32, "head_depth": 1, "head_steps": 2, "steps": 3, "pivot_steps": 2}
    unit = build_unit("hi_mar", d_model=D, grid=GRID, latent_dim=C, **{**small, **kwargs})
    return trunk, unit.eval(), ClassCondition(10, D).eval()


def test_pivots_are_window_averages_at_window_centres():
    _, unit, _ = setup(pivots=2)
    x = torch.randn(2, 4, 4, C)
    pooled = unit.pool(x)  # (B, 4, C)
    torch.testing.assert_close(pooled[:, 1], x[:, 0:2, 2:4].mean((1, 2)))  # pivot (0, 1)
    torch.testing.assert_close(pooled[:, 2], x[:, 2:4, 0:2].mean((1, 2)))  # pivot (1, 0)
    assert unit.positions(1)[1:5].tolist() == [[1, 1], [1, 3], [3, 1], [3, 3]]


def test_each_training_sample_is_in_one_phase():
    trunk, unit, cond = setup(pivot_prob=0.5)
    x = torch.randn(64, *GRID, C)
    batch = unit.prepare(x, cond(torch.zeros(64, dtype=torch.long)))
    masked, predicted, p = batch.extras["masked"], batch.extras["predicted"], unit.num_pivots
    pivot_rows = predicted[:, :p].any(1)
    assert 10 < pivot_rows.sum() < 54  # about half of the samples
    assert masked[pivot_rows, p:].all() and not predicted[pivot_rows, p:].any()  # dense hidden, not learned
    dense_rows = ~pivot_rows
    assert not masked[dense_rows, :p].any() and predicted[dense_rows, p:].any(1).all()  # clean pivots
    assert torch.equal(predicted, predicted & masked)
    torch.testing.assert_close(batch.targets[:, :p], unit.pool(x))
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert torch.isfinite(loss)


def test_generation_makes_pivots_then_dense_tokens():
    trunk, unit, cond = setup()
    rows = []
    sample = unit.head.sample
    unit.head.sample = lambda z, *args: rows.append(len(z)) or sample(z, *args)
    calls = []
    trunk.register_forward_hook(lambda *_: calls.append(1))
    out = unit.generate(trunk, cond(torch.tensor([1, 2])), GRID, Sampler(seed=0))
    assert out.shape == (2, *GRID, C) and len(calls) == unit.num_steps(GRID) == 2 + 3
    assert sum(rows[:2]) == 2 * 4 and sum(rows[2:]) == 2 * 16  # the pivots' steps, then the dense ones


def test_bad_pivots_are_config_errors():
    with pytest.raises(ConfigError, match=r"pivots=3 must divide the image token grid \[4, 4\]"):
        setup(pivots=3)
