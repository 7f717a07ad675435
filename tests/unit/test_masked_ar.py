"""MaskedAR (MAR): the cosine schedule with its clamps, the truncated-normal mask ratio, bidirectional
masked inputs, guidance linear in the revealed fraction, and K trunk passes."""

import math

import pytest
import torch
from scipy.stats import truncnorm

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.masked_ar import masked_after, sample_mask_ratio

GRID, C, D = (4, 4), 3, 64


def setup(**kwargs):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("masked_ar", d_model=D, grid=GRID, latent_dim=C, head_width=32, head_depth=1, **kwargs)
    return trunk, unit.eval(), ClassCondition(10, D).eval()


@pytest.mark.parametrize("n, steps", [(256, 64), (256, 16), (16, 4), (16, 8), (4, 10)])
def test_schedule_leaves_floor_n_cos_masked_with_clamps(n, steps):
    masked = n
    for k in range(steps):
        keep = masked_after(k, steps, n, masked)
        if k == steps - 1:
            assert keep == 0
        else:
            expected = math.floor(n * math.cos(math.pi / 2 * (k + 1) / steps))
            assert keep == max(1, min(masked - 1, expected))
            assert keep >= 1 and (keep < masked or masked == 1)
        masked = keep
    assert masked == 0


def test_mask_ratio_is_the_truncated_normal_on_07_1():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_mask_ratio(generator=g) for _ in range(20_000)])
    assert draws.min() >= 0.7 and draws.max() <= 1.0
    expected = truncnorm((0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
    assert abs(draws.mean() - expected.mean()) < 0.003 and abs(draws.std() - expected.std()) < 0.003


def test_prepare_masks_ceil_r_n_tokens_with_the_mask_embedding():
    trunk, unit, cond = setup()
    x, c = torch.randn(3, *GRID, C), cond(torch.tensor([1, 2, 3])).tokens
    batch = unit.prepare(x, c)
    masked = batch.extras["masked"]
    counts = masked.sum(1)
    assert (
        batch.mask is None and (counts == counts[0]).all() and 12 <= counts[0] <= 16
    )  # ceil(r 16), r >= 0.7
    tokens = batch.inputs[:, 1:]
    torch.testing.assert_close(tokens[masked], unit.mask_token.expand(int(masked.sum()), D))
    torch.testing.assert_close(tokens[~masked], unit.embed(x.flatten(1, 2))[~masked])
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_generation_reveals_on_schedule_with_guidance_linear_in_the_revealed_fraction():
    trunk, unit, cond = setup(steps=5)
    calls = []
    sample = unit.head.sample

    def spy(z, steps, cfg_scale, *args):
        assert len(cfg_scale) == len(z) // 2 and (cfg_scale == cfg_scale[0]).all()  # one scale per row
        calls.append((len(z), float(cfg_scale[0])))
        return sample(z, steps, cfg_scale, *args)

    unit.head.sample = spy
    sampler = Sampler(cfg_scale=3.0, cfg_schedule="linear", seed=0)
    out = unit.generate(trunk, cond.for_sampling(torch.tensor([0, 7]), True).tokens, GRID, sampler)
    assert out.shape == (2, *GRID, C) and torch.isfinite(out).all() and unit.num_steps(GRID) == 5
    masked, expected = 16, []
    for k in range(5):
        keep = masked_after(k, 5, 16, masked)
        expected.append((2 * 2 * (masked - keep), 1 + 2.0 * (16 - keep) / 16))  # 2 images x CFG halves
        masked = keep
    assert [n for n, _ in calls] == [n for n, _ in expected]
    assert [s for _, s in calls] == pytest.approx([s for _, s in expected])
    again = unit.generate(trunk, cond.for_sampling(torch.tensor([0, 7]), True).tokens, GRID, sampler)
    assert torch.equal(out, again)  # seeded


def test_discrete_tokens_and_bad_settings_are_config_errors():
    _, unit, cond = setup()
    with pytest.raises(ConfigError, match="continuous tokens"):
        unit.prepare(torch.zeros(1, *GRID, dtype=torch.long), cond(torch.tensor([0])).tokens)
    with pytest.raises(ConfigError, match="steps, head_steps, head_batch_mul >= 1"):
        setup(steps=0)


def test_padding_is_never_masked_attended_or_generated():
    trunk, unit, cond = setup(steps=4)
    x, c = torch.randn(2, *GRID, C), cond(torch.tensor([1, 2])).tokens
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[0, :10], valid[1, :5] = True, True  # 10 and 5 real tokens, then padding
    torch.manual_seed(1)
    batch = unit.prepare(x, c, valid=valid)
    masked = batch.extras["masked"]
    assert not (masked & ~valid).any() and masked[0].sum() >= 7 and masked[1].sum() >= 4  # ceil(0.7 K_b)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    junk = batch.inputs.clone()
    junk[:, 1:][~valid] = torch.randn(int((~valid).sum()), D)  # change only the padded inputs
    hidden_junk = trunk(junk, batch.positions, batch.mask)
    keep = torch.cat([torch.ones(2, 1, dtype=torch.bool), valid], 1)
    torch.testing.assert_close(hidden_junk[keep], hidden[keep], atol=1e-5, rtol=0)  # padding is not attended

    sampler = Sampler(cfg_scale=2.0, cfg_schedule="linear", seed=0)
    out = unit.generate(
        trunk, cond.for_sampling(torch.tensor([1, 2]), True).tokens, GRID, sampler, valid=valid
    )
    flat = out.flatten(1, 2)
    assert (flat[~valid] == 0).all() and (flat[valid] != 0).all()  # every real token generated, padding not


@pytest.mark.parametrize(
    "head, head_kwargs, shape", [("categorical", {}, ()), ("channel_ar", {"channels": 3}, (3,))]
)
def test_discrete_tokens_with_a_token_head(head, head_kwargs, shape):
    torch.manual_seed(0)
    trunk, cond = Trunk(trunk_config("debug")).eval(), ClassCondition(10, D).eval()
    unit = build_unit(
        "masked_ar", d_model=D, grid=GRID, vocab_size=11, head=head, head_kwargs=head_kwargs, steps=4
    ).eval()
    ids = torch.randint(0, 11, (2, *GRID, *shape))
    batch = unit.prepare(ids, cond(torch.tensor([3, 4])).tokens)
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert torch.isfinite(loss) and loss > 0
    out = unit.generate(
        trunk, cond.for_sampling(torch.tensor([3, 4]), True).tokens, GRID, Sampler(cfg_scale=2.0, seed=1)
    )
    assert out.shape == (2, *GRID, *shape) and out.dtype == torch.long and out.min() >= 0 and out.max() < 11


def test_token_heads_guide_each_image_at_its_own_progress():
    # with padding the images run their own schedules: 12 and 4 real tokens reveal different fractions
    torch.manual_seed(0)
    trunk, cond = Trunk(trunk_config("debug")).eval(), ClassCondition(10, D).eval()
    unit = build_unit("masked_ar", d_model=D, grid=GRID, vocab_size=11, head="categorical", steps=3).eval()
    valid = torch.zeros(2, 16, dtype=torch.bool)
    valid[0, :12], valid[1, :4] = True, True
    seen = []

    class Recording(Sampler):
        def pick(self, logits, progress=0.0, generator=None):
            seen.append(progress.clone())
            return super().pick(logits, progress, generator)

    sampler = Recording(cfg_scale=2.0, cfg_schedule="linear", seed=0)
    unit.generate(trunk, cond.for_sampling(torch.tensor([1, 2]), True).tokens, GRID, sampler, valid=valid)
    masked = [12, 4]
    for k, progress in enumerate(seen):
        keep = [masked_after(k, 3, n, m) for n, m in zip([12, 4], masked)]
        expected = [(n - kb) / n for n, kb in zip([12, 4], keep)]
        rows = [m - kb for m, kb in zip(masked, keep)]
        torch.testing.assert_close(progress, torch.tensor(expected).repeat_interleave(torch.tensor(rows)))
        masked = keep
    assert len(seen) == 3 and masked == [0, 0]


def test_a_flow_head_needs_continuous_tokens():
    with pytest.raises(
        ConfigError, match=r"head 'flow' models continuous tokens but the tokenizer's are discrete"
    ):
        build_unit("masked_ar", d_model=D, grid=GRID, vocab_size=11)
