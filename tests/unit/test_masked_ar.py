"""MaskedAR (MAR): the cosine schedule with its clamps, the truncated-normal mask ratio, bidirectional
masked inputs, guidance linear in the revealed fraction, and K trunk passes; with skip_masked, passes over
the known and predicted tokens only, trained on exactly the states generation meets."""

import itertools
import math

import pytest
import torch
from scipy.stats import truncnorm

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import PassCounter, Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.masked_ar import masked_after, masked_counts, sample_mask_ratio, select

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


# skip_masked: passes over [cond, known tokens, the tokens the step predicts]


def live(trunk, unit, cond):
    """The zero-initialised layers (the flow head's output, AdaLN) made non-trivial, so that the samples
    depend on the trunk's hidden states."""
    for p in unit.parameters():
        if p.ndim > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.3)
    return trunk, unit, cond


def reference_unmask(unit, trunk, cond, state, region, steps, sampler, generator, keys=None):
    """MaskedAR.unmask as it was before skip_masked existed: the oracle of the default path."""
    x, masked = state
    guided, n_cond = sampler.guided, cond.shape[1]
    both = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)
    positions, mask = unit.decoding_layout(n_cond, x.shape[1], None if keys is None else both(keys))
    ranks = unit.random_ranks(region, generator)
    lengths = region.sum(1)
    masked_now = lengths.tolist()
    for k in range(steps):
        hidden = trunk(unit.inputs(cond, both(x), both(masked)), positions, mask)[:, n_cond:]
        keep = [masked_after(k, steps, n, m) for n, m in zip(lengths.tolist(), masked_now)]
        keep_t = torch.tensor(keep)
        reveal = masked & region & (ranks >= keep_t[:, None])
        if reveal.any():
            z = torch.cat([h[reveal] for h in hidden.chunk(2)]) if guided else hidden[reveal]
            revealed = ((lengths - keep_t) / lengths.clamp(min=1)).tolist()
            x[reveal] = unit.sample_tokens(z, revealed, reveal.sum(1), sampler, generator)
        masked &= ~reveal
        masked_now = keep


@pytest.mark.parametrize("case", ["cfg", "unguided", "padding", "prefix", "categorical"])
def test_the_default_path_is_bit_for_bit_the_one_before_skip_masked(case):
    if case == "categorical":
        torch.manual_seed(0)
        trunk, cond = Trunk(trunk_config("debug")).eval(), ClassCondition(10, D).eval()
        unit = build_unit(
            "masked_ar", d_model=D, grid=GRID, vocab_size=11, head="categorical", steps=4
        ).eval()
    else:
        trunk, unit, cond = live(*setup(steps=5, head_steps=3))
    sampler = Sampler(cfg_scale=1.0 if case == "unguided" else 3.0, cfg_schedule="linear", seed=0)
    c = cond.for_sampling(torch.tensor([0, 7]), sampler.guided).tokens
    kwargs = {}
    if case == "padding":
        kwargs["valid"] = torch.arange(16)[None] < torch.tensor([[10], [5]])
    if case == "prefix":
        kwargs["prefix"] = torch.randn(2, 1, 4, C)
    out = unit.generate(trunk, c, GRID, sampler, **kwargs)
    unit.unmask = lambda *args: reference_unmask(unit, *args)
    assert torch.equal(out, unit.generate(trunk, c, GRID, sampler, **kwargs))


def test_select_keeps_each_rows_columns_in_order():
    seen = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    index, real = select(seen)
    assert index[0].tolist() == [0, 2, 3] and index[1, 0] == 1 and real.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_skip_masked_passes_hold_the_known_tokens_and_those_the_step_predicts():
    trunk, unit, cond = setup(steps=5, skip_masked=True)
    passes = []
    trunk.register_forward_pre_hook(lambda module, args: passes.append(args[0]))
    sampler = Sampler(cfg_scale=3.0, cfg_schedule="linear", seed=0)
    with PassCounter(trunk) as counter:
        out = unit.generate(trunk, cond.for_sampling(torch.tensor([0, 7]), True).tokens, GRID, sampler)
    assert out.shape == (2, *GRID, C) and torch.isfinite(out).all()
    assert counter.count == unit.num_steps(GRID) == 5  # one pass a step, as MAR
    counts = masked_counts(5, 16)
    assert [x.shape[:2] for x in passes] == [(4, 1 + 16 - after) for after in counts[1:]]  # CFG rows x L
    assert sum(x.shape[1] for x in passes) < 5 * (1 + 16)  # fewer positions than the default's passes
    for x, before, after in zip(passes, counts, counts[1:]):
        is_mask = (x[:, 1:] == unit.mask_token).all(-1)  # (2B, L)
        assert (is_mask.sum(1) == before - after).all()  # mask embeddings only where the step predicts


def test_skip_masked_generation_is_seeded_and_guided_on_schedule():
    trunk, unit, cond = live(*setup(steps=5, skip_masked=True))
    calls = []
    sample = unit.head.sample

    def spy(z, steps, cfg_scale, *args):
        calls.append((len(z), float(cfg_scale[0])))
        return sample(z, steps, cfg_scale, *args)

    unit.head.sample = spy
    sampler = Sampler(cfg_scale=3.0, cfg_schedule="linear", seed=0)
    c = cond.for_sampling(torch.tensor([0, 7]), True).tokens
    out = unit.generate(trunk, c, GRID, sampler)
    counts = masked_counts(5, 16)
    expected = [(2 * 2 * (m - keep), 1 + 2.0 * (16 - keep) / 16) for m, keep in itertools.pairwise(counts)]
    assert [n for n, _ in calls] == [n for n, _ in expected]
    assert [s for _, s in calls] == pytest.approx([s for _, s in expected])
    assert torch.equal(out, unit.generate(trunk, c, GRID, sampler))
    unit.skip_masked = False  # the same weights, MAR's passes: another model, other samples
    assert not torch.equal(out, unit.generate(trunk, c, GRID, sampler))


def test_skip_masked_keeps_a_prefix_bit_for_bit_and_leaves_padding_out():
    trunk, unit, cond = setup(steps=4, skip_masked=True)
    c = cond.for_sampling(torch.tensor([1, 2]), True).tokens
    prefix = torch.randn(2, 1, 4, C)
    lengths = []
    trunk.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = unit.generate(trunk, c, GRID, Sampler(cfg_scale=2.0, seed=0), prefix=prefix)
    assert torch.equal(out[:, :1], prefix) and torch.isfinite(out).all()
    assert lengths == [1 + 4 + 12 - after for after in masked_counts(4, 12)[1:]]  # the prefix read every pass

    valid = torch.arange(16)[None] < torch.tensor([[10], [5]])  # 10 and 5 real tokens
    masks = []
    trunk.register_forward_pre_hook(lambda module, args: masks.append(args[2]))
    out = unit.generate(trunk, c, GRID, Sampler(cfg_scale=2.0, seed=0), valid=valid).flatten(1, 2)
    assert (out[~valid] == 0).all() and (out[valid] != 0).all()
    last = masks[
        -1
    ].mask  # (2B, L, L): the last pass reads every real token; the shorter rows' filler is hidden
    assert last.shape == (4, 1 + 10, 1 + 10) and not last[1, :, 1 + 5 :].any() and last[0].all()


def test_skip_masked_training_states_are_generation_states():
    _, unit, _ = setup(steps=5, skip_masked=True)
    counts = masked_counts(5, 16)
    states = {(16 - m, m - keep) for m, keep in itertools.pairwise(counts)}  # (known, predicted) per step
    seen = []
    torch.manual_seed(0)
    for _ in range(2000):
        masked, predicted = unit.sample_step(torch.ones(3, 16, dtype=torch.bool), 5)
        known, made = (~masked).sum(1), predicted.sum(1)
        assert (known == known[0]).all() and (made == made[0]).all()  # one step per batch
        seen.append((int(known[0]), int(made[0])))
    assert set(seen) == states
    for m, keep in itertools.pairwise(counts):  # steps drawn in proportion to the tokens they reveal
        assert abs(seen.count((16 - m, m - keep)) / 2000 - (m - keep) / 16) < 0.04


def test_skip_masked_training_drops_the_other_masked_tokens_and_scores_the_predicted_ones():
    trunk, unit, cond = setup(steps=5, skip_masked=True, head_batch_mul=2)
    x = torch.randn(3, *GRID, C)
    torch.manual_seed(3)
    batch = unit.prepare(x, cond(torch.tensor([1, 2, 3])).tokens)
    index, predicted = batch.extras["index"], batch.extras["predicted"]
    length = index.shape[1]
    assert batch.inputs.shape == (3, 1 + length, D) and length < 16 and batch.mask is None
    tokens = batch.inputs[:, 1:]
    is_mask = (tokens == unit.mask_token).all(-1)
    assert torch.equal(is_mask, predicted) and predicted.any()  # every masked input is predicted
    rows = torch.arange(3)[:, None]
    torch.testing.assert_close(tokens[~is_mask], unit.embed(x.flatten(1, 2)[rows, index])[~is_mask])
    torch.testing.assert_close(batch.positions[:, 1:], unit.positions(0)[index])  # their own grid places
    scored = []
    loss = unit.head.loss
    unit.head.loss = lambda target, z: scored.append(target) or loss(target, z)
    unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)
    torch.testing.assert_close(scored[0], x.flatten(1, 2)[rows, index][predicted].repeat(2, 1))


def test_skip_masked_training_pass_is_the_generation_pass():
    # teacher forcing on a generated image at each step's state gives the hidden states that step sampled from
    trunk, unit, cond = live(*setup(steps=4, skip_masked=True))
    c = cond.for_sampling(torch.tensor([4, 5]), False).tokens
    states, zs = [], []
    layout, sample = unit.skip_layout, unit.head.sample
    unit.skip_layout = lambda cond, x, masked, seen, *args: (
        states.append((masked.clone(), seen & masked)) or layout(cond, x, masked, seen, *args)
    )
    unit.head.sample = lambda z, *args: zs.append(z) or sample(z, *args)
    out = unit.generate(trunk, c, GRID, Sampler(seed=0))
    del unit.skip_layout
    assert len(states) == len(zs) == 4
    for (masked, predicted), z in zip(states, zs):
        unit.sample_step = lambda valid, steps, state=(masked, predicted): state
        batch = unit.prepare(out, c)
        hidden = trunk(batch.inputs, batch.positions, batch.mask)[:, 1:]
        torch.testing.assert_close(hidden[batch.extras["predicted"]], z, rtol=1e-5, atol=1e-5)
        rows = torch.arange(2)[:, None]
        torch.testing.assert_close(batch.targets[batch.extras["predicted"]], out.flatten(1, 2)[predicted])
        assert torch.equal(predicted[rows, batch.extras["index"]], batch.extras["predicted"])


def test_skip_masked_with_padding_and_a_token_head():
    torch.manual_seed(0)
    trunk, cond = Trunk(trunk_config("debug")).eval(), ClassCondition(10, D).eval()
    unit = build_unit(
        "masked_ar", d_model=D, grid=GRID, vocab_size=11, head="categorical", steps=3, skip_masked=True
    ).eval()
    valid = torch.arange(16)[None] < torch.tensor([[12], [4]])
    batch = unit.prepare(torch.randint(0, 11, (2, *GRID)), cond(torch.tensor([3, 4])).tokens, valid=valid)
    index, predicted = batch.extras["index"], batch.extras["predicted"]
    real = batch.mask.mask[:, 0, 1:]  # (B, L) the keys: a shorter row's filler is hidden
    rows = torch.arange(2)[:, None]
    assert not (predicted & ~valid[rows, index]).any()  # padding is never predicted
    counts = [masked_counts(3, n) for n in (12, 4)]
    known = (valid[rows, index] & ~batch.extras["masked"] & real).sum(1).tolist()
    assert any(known == [n - c[k] for n, c in zip((12, 4), counts)] for k in range(3))  # one step for both
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert torch.isfinite(loss)
    c = cond.for_sampling(torch.tensor([3, 4]), True).tokens
    out = unit.generate(trunk, c, GRID, Sampler(cfg_scale=2.0, seed=1), valid=valid)
    assert out.shape == (2, *GRID) and out.dtype == torch.long and (out.flatten(1)[~valid] == 0).all()


def test_skip_masked_replaces_the_mask_ratio():
    with pytest.raises(ConfigError, match=r"mask_min=0\.5 would be ignored; drop mask_min or skip_masked"):
        setup(skip_masked=True, mask_min=0.5)


@pytest.mark.parametrize("name", ["masked_ar", "hi_mar"])
def test_skip_masked_reads_a_padded_caption_like_the_unpadded_one(name):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    kwargs = {"pivots": 2} if name == "hi_mar" else {}
    small = {"head_width": 16, "head_depth": 1, "steps": 3, "head_steps": 2}
    unit = build_unit(name, d_model=D, grid=GRID, latent_dim=C, skip_masked=True, **small, **kwargs).eval()
    live(trunk, unit, None)
    cond = torch.randn(4, 6, D)  # rows 2, 3: the null half of a CFG batch
    cond[:, :3] = 100.0  # caption padding that would swamp attention if it leaked
    padded = trunk.with_prefix_padding(torch.arange(6).expand(4, -1) >= 3)

    def loss(t, c):
        torch.manual_seed(2)
        batch = unit.prepare(torch.randn(2, *GRID, C, generator=torch.Generator().manual_seed(1)), c)
        return unit.loss(t(batch.inputs, batch.positions, batch.mask), batch)["loss"]

    torch.testing.assert_close(loss(padded, cond[:2]), loss(trunk, cond[:2, 3:]), atol=1e-5, rtol=1e-5)
    sampler = Sampler(cfg_scale=2.0, seed=3)
    tokens = {"valid": torch.arange(16)[None] < torch.tensor([[12], [7]])} if name == "masked_ar" else {}
    got = unit.generate(padded, cond, GRID, sampler, **tokens)  # caption keys and token filler both hidden
    torch.testing.assert_close(
        got, unit.generate(trunk, cond[:, 3:], GRID, sampler, **tokens), atol=1e-4, rtol=1e-4
    )
