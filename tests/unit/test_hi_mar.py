"""Hi-MAR: pivots are window averages at the windows' centres, training packs both phases into one
sequence whose passes equal generation's, and generation makes the pivots first (pivot_steps), then the
dense tokens (steps); with skip_masked each phase's passes read its known and predicted tokens only."""

import math

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import PassCounter, Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.masked_ar import masked_counts

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
    assert unit.pivot_positions().tolist() == [[1, 1], [1, 3], [3, 1], [3, 3]]


def test_pivot_windows_of_a_rectangular_grid():
    unit = build_unit("hi_mar", d_model=D, grid=(4, 8), latent_dim=C, pivots=2, head_width=32, head_depth=1)
    assert unit.window == (2, 4) and unit.pivot_positions().tolist() == [[1, 2], [1, 6], [3, 2], [3, 6]]


def test_training_packs_both_phases_into_one_sequence():
    _, unit, cond = setup()
    x = torch.randn(256, *GRID, C)
    batch = unit.prepare(x, cond(torch.zeros(256, dtype=torch.long)).tokens)
    p, n = unit.num_pivots, 16
    pooled = unit.pool(x)
    torch.testing.assert_close(batch.targets, torch.cat([pooled, pooled, x.flatten(1, 2)], dim=1))
    masked = batch.extras["masked"]
    assert set(masked[:, :p].sum(1).tolist()) == {1, 2, 3, 4}  # every count the pivot schedule meets
    assert not masked[:, p : 2 * p].any()  # phase 2's pivots are clean
    dense = masked[:, 2 * p :].sum(1)
    assert (dense == dense[0]).all() and dense[0] >= math.ceil(0.7 * n)  # MAR's ratio, one per batch
    # brute force: the condition sees itself; every other token the condition and its own phase
    phase = [0] + [1] * p + [2] * (p + n)
    expected = torch.tensor([[k == q or k == 0 for k in phase] for q in phase])
    assert torch.equal(batch.mask.mask, expected)


def test_each_phase_of_training_equals_its_generation_pass():
    trunk, unit, cond = setup()
    x = torch.randn(3, *GRID, C)
    c = cond(torch.tensor([1, 2, 3])).tokens
    batch = unit.prepare(x, c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)  # (B, 1 + 2P + N, D)
    p, targets, masked = unit.num_pivots, batch.targets, batch.extras["masked"]
    for part in (slice(0, p), slice(p, None)):  # phase 1: [cond, pivots]; phase 2: [cond, pivots, dense]
        tokens, hide = targets[:, part], masked[:, part]
        positions, mask = unit.decoding_layout(1, tokens.shape[1], None)
        alone = trunk(unit.inputs(c, tokens, hide), positions, mask)
        torch.testing.assert_close(alone[:, 1:], hidden[:, 1:][:, part], rtol=1e-5, atol=1e-5)


def test_loss_sums_the_two_phases_means():
    # the pivots' few tokens are one mean, the dense tokens' many another: the pivots' gradient does not
    # shrink with the number of dense tokens
    trunk, unit, cond = setup(head_batch_mul=1)
    batch = unit.prepare(torch.randn(16, *GRID, C), cond(torch.zeros(16, dtype=torch.long)).tokens)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    predicted, p = batch.extras["predicted"], unit.num_pivots
    torch.manual_seed(1)
    losses = unit.loss(hidden, batch)
    torch.manual_seed(1)
    z, x = hidden[:, 1:], batch.targets
    pivot = unit.head.loss(x[:, :p][predicted[:, :p]], z[:, :p][predicted[:, :p]])
    dense = unit.head.loss(x[:, 2 * p :][predicted[:, 2 * p :]], z[:, 2 * p :][predicted[:, 2 * p :]])
    torch.testing.assert_close(losses["loss_pivot"], pivot)
    torch.testing.assert_close(losses["loss_dense"], dense)
    torch.testing.assert_close(losses["loss"], pivot + dense)


def test_generation_makes_pivots_then_dense_tokens():
    trunk, unit, cond = setup()
    rows = []
    sample = unit.head.sample
    unit.head.sample = lambda z, *args: rows.append(len(z)) or sample(z, *args)
    lengths = []
    trunk.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    out = unit.generate(trunk, cond(torch.tensor([1, 2])).tokens, GRID, Sampler(seed=0))
    assert out.shape == (2, *GRID, C) and len(lengths) == unit.num_steps(GRID) == 2 + 3
    assert lengths == [1 + 4] * 2 + [1 + 4 + 16] * 3  # phase 1 over [cond, pivots], then with the dense
    assert sum(rows[:2]) == 2 * 4 and sum(rows[2:]) == 2 * 16  # the pivots' steps, then the dense ones


def test_upsampling_repeats_each_pivot_over_its_window():
    unit = build_unit("hi_mar", d_model=D, grid=(4, 8), latent_dim=C, pivots=2, head_width=32, head_depth=1)
    pivots = torch.randn(2, 4, C)
    up = unit.upsample(pivots)  # (B, 4, 8, C)
    torch.testing.assert_close(up[:, 2:4, 0:4], pivots[:, 2, None, None].expand(-1, 2, 4, -1))  # pivot (1, 0)
    torch.testing.assert_close(unit.pool(up), pivots)  # a right inverse of pool


def test_generated_dense_windows_average_to_their_pivots():
    trunk, unit, cond = setup()
    made = []
    unmask = unit.unmask
    unit.unmask = lambda trunk, cond, state, *args: made.append(state[0]) or unmask(trunk, cond, state, *args)
    labels = cond.for_sampling(torch.tensor([1, 2]), True).tokens
    out = unit.generate(trunk, labels, GRID, Sampler(cfg_scale=2.0, seed=0))
    pivots = made[0]  # phase 1 filled them in place
    torch.testing.assert_close(unit.pool(out), pivots)
    unit.pivot_consistent = False
    raw = unit.generate(trunk, labels, GRID, Sampler(cfg_scale=2.0, seed=0))
    assert not torch.allclose(unit.pool(raw), pivots, atol=1e-3)  # the dense phase alone does not hold them
    # each window is shifted as a whole: the detail within a window is the dense phase's
    torch.testing.assert_close(out - unit.upsample(pivots), raw - unit.upsample(unit.pool(raw)))


def test_bad_pivots_are_config_errors():
    with pytest.raises(ConfigError, match=r"pivots=3 must divide the image token grid \[4, 4\]"):
        setup(pivots=3)


def test_pivot_phase_guides_more_strongly():
    trunk, unit, cond = setup(pivot_guidance=2.0)
    scales = []
    sample = unit.head.sample
    unit.head.sample = lambda z, steps, scale, *args: (
        scales.append(scale.unique().tolist()) or sample(z, steps, scale, *args)
    )
    unit.generate(
        trunk, cond.for_sampling(torch.tensor([1, 2]), True).tokens, GRID, Sampler(cfg_scale=3.0, seed=0)
    )
    assert scales[:2] == [[5.0], [5.0]] and all(s == [3.0] for s in scales[2:])  # 1 + 2 (3 - 1), then 3


def test_pivot_guidance_zero_samples_the_pivots_unguided():
    trunk, unit, cond = setup(pivot_guidance=0.0)
    rows = []
    sample = unit.head.sample
    unit.head.sample = lambda z, steps, scale, *args: (
        rows.append((len(z), scale)) or sample(z, steps, scale, *args)
    )
    out = unit.generate(
        trunk, cond.for_sampling(torch.tensor([1, 2]), True).tokens, GRID, Sampler(cfg_scale=3.0, seed=0)
    )
    assert out.shape == (2, *GRID, C)
    assert sum(n for n, _ in rows[:2]) == 2 * 4 and all(scale == 1.0 for _, scale in rows[:2])  # no null half
    assert sum(n for n, _ in rows[2:]) == 2 * 2 * 16  # the dense phase keeps its CFG batch


# skip_masked: each phase's passes read its known tokens and those the step predicts


def test_skip_masked_phases_pass_over_known_and_predicted_tokens():
    trunk, unit, cond = setup(skip_masked=True)
    lengths = []
    trunk.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    c = cond.for_sampling(torch.tensor([1, 2]), True).tokens
    with PassCounter(trunk) as counter:
        out = unit.generate(trunk, c, GRID, Sampler(cfg_scale=2.0, seed=0))
    assert out.shape == (2, *GRID, C) and torch.isfinite(out).all()
    assert counter.count == unit.num_steps(GRID) == 2 + 3
    pivots = [1 + 4 - after for after in masked_counts(2, 4)[1:]]  # [cond, known pivots, predicted]
    dense = [1 + 4 + 16 - after for after in masked_counts(3, 16)[1:]]  # [cond, pivots, known, predicted]
    assert lengths == pivots + dense


def test_skip_masked_training_phases_are_generation_passes():
    trunk, unit, cond = setup(skip_masked=True)
    x, c = torch.randn(3, *GRID, C), cond(torch.tensor([1, 2, 3])).tokens
    torch.manual_seed(0)
    batch = unit.prepare(x, c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)[:, 1:]  # (B, L, D)
    index, masked, predicted = (batch.extras[k] for k in ("index", "masked", "predicted"))
    p, rows = unit.num_pivots, torch.arange(3)[:, None]
    full = torch.cat([unit.pool(x), unit.pool(x), x.flatten(1, 2)], dim=1)  # (B, 2P + N, C)
    seen = torch.zeros(3, 2 * p + 16, dtype=torch.bool)
    seen[rows, index] = True
    full_masked = ~seen
    full_masked[rows, index] = masked  # (B, 2P + N): dropped or masked inputs
    assert (
        predicted[index < p].any()
        and predicted[index >= 2 * p].any()
        and not predicted[(index >= p) & (index < 2 * p)].any()
    )  # both phases predict something; phase 2's pivots are clean
    for part in (slice(0, p), slice(p, None)):  # phase 1: [cond, pivots]; phase 2: [cond, pivots, dense]
        length = full[:, part].shape[1]
        inputs, positions, mask, _, _ = unit.skip_layout(
            c, full[:, part], full_masked[:, part], seen[:, part], *unit.decoding_layout(1, length, None)
        )
        alone = trunk(inputs, positions, mask)[:, 1:]
        cols = (index >= part.start) & (index < part.start + length)  # (B, L) this phase's inputs
        torch.testing.assert_close(alone.flatten(0, 1), hidden[cols], rtol=1e-5, atol=1e-5)


def test_skip_masked_loss_sums_the_two_phases_means_over_the_predicted_tokens():
    trunk, unit, cond = setup(skip_masked=True, head_batch_mul=1)
    batch = unit.prepare(torch.randn(8, *GRID, C), cond(torch.zeros(8, dtype=torch.long)).tokens)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    predicted, index, p = batch.extras["predicted"], batch.extras["index"], unit.num_pivots
    torch.manual_seed(1)
    losses = unit.loss(hidden, batch)
    torch.manual_seed(1)
    z, x = hidden[:, 1:], batch.targets
    pivot, dense = predicted & (index < p), predicted & (index >= 2 * p)
    torch.testing.assert_close(losses["loss_pivot"], unit.head.loss(x[pivot], z[pivot]))
    torch.testing.assert_close(losses["loss_dense"], unit.head.loss(x[dense], z[dense]))
