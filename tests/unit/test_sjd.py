"""Speculative Jacobi decoding (SJD) and LANTERN's relaxed acceptance for the next-token units: SJD samples
(batches with ragged acceptance, CFG, top-k) follow the model's exact joint distribution (chi-square
against enumeration, with wrong rules shown to fail), greedy SJD equals greedy decoding, passes <= N (< N
on a peaked model), the KV cache rolls back, LANTERN with delta = 0 is SJD and accepts at least as much,
random_order, padded text conditions, prefix and fixed work."""

import itertools
from dataclasses import replace

import pytest
import torch
from torch import nn

import mmar.units.speculative as speculative
from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.sampling import Sampler, add_sampler_arguments, sampler_from_arguments
from mmar.trunk import PassCounter, Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.speculative import (
    accept_drafts,
    nearest_neighbours,
    relaxed_probability,
    residual,
)

D = 64


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson's goodness of fit of observed counts [K] to probabilities [K]; cells expected below
    `min_expected` are pooled into one."""
    counts, expected = counts.double(), probs.double() * counts.sum()
    small = expected < min_expected
    observed = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = ((observed - expected) ** 2 / expected.clamp_min(1e-12)).sum()
    dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))


def tiny_model(unit_name: str = "next_token", grid=(2, 2), vocab: int = 3, seed: int = 0):
    """A debug trunk and unit whose conditionals are far from uniform and depend on the context."""
    torch.manual_seed(seed)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit(unit_name, d_model=D, grid=grid, vocab_size=vocab).eval()
    with torch.no_grad():
        unit.head.embedding.weight.normal_(0, 1.0)
        unit.head.proj.weight.normal_(0, 0.12)
        if unit_name == "random_order":
            unit.target_embedding.weight.normal_(0, 1.0)
    return trunk, unit, ClassCondition(10, D).eval()


def exact_joint(trunk, unit, cond, label: int, sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sequence [V^N, N] and its probability under plain decoding, from full forwards."""
    n, v = unit.seq_len, unit.vocab_size
    seqs = torch.tensor(list(itertools.product(range(v), repeat=n)))  # (V^N, N)
    labels = torch.full((len(seqs),), label)
    c = cond.for_sampling(labels, sampler.guided).tokens  # (S or 2S, 1, D)
    batch = unit.prepare((torch.cat([seqs, seqs]) if sampler.guided else seqs).unflatten(1, unit.grid), c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    logits = unit.head(hidden[:, c.shape[1] - 1 :])  # (S', N, V): position i predicts token i
    probs = sampler.probs(logits, torch.arange(n) / n)  # (S, N, V)
    return seqs, probs.gather(-1, seqs[..., None])[..., 0].prod(-1)


def sjd_counts(trunk, unit, cond, label: int, sampler: Sampler, calls: int, rows: int) -> torch.Tensor:
    """Counts [V^N] of the sequences SJD draws in `calls` generate calls of `rows` rows (seeds 0..)."""
    n, v = unit.seq_len, unit.vocab_size
    c = cond.for_sampling(torch.full((rows,), label), sampler.guided).tokens
    weights = v ** torch.arange(n - 1, -1, -1)  # raster sequence -> its index in `exact_joint`'s order
    counts = torch.zeros(v**n, dtype=torch.long)
    for seed in range(calls):
        sampler.seed = seed
        tokens = unit.generate(trunk, c, unit.grid, sampler).flatten(1)  # (rows, N)
        counts += torch.bincount((tokens * weights).sum(1), minlength=v**n)
    return counts


@torch.no_grad()
def test_sampler_probs_is_the_distribution_pick_draws_from():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6).expand(2, 20000, 6).reshape(40000, 6)  # 20000 cond rows, then null rows
    sampler = Sampler(cfg_scale=2.0, temperature=0.8, top_p=0.9, min_p=0.05, seed=0)
    ids = sampler.pick(logits, 0.3, sampler.generator("cpu"))  # (20000,)
    probs = sampler.probs(logits[[0, 20000]], 0.3)[0]  # (V,)
    assert (probs[torch.bincount(ids, minlength=6) > 0] > 0).all()  # same support
    assert chi_square_pvalue(torch.bincount(ids, minlength=6), probs) > 1e-3
    greedy = Sampler(temperature=0, cfg_scale=2.0).probs(logits[[0, 20000]])
    assert torch.equal(greedy.argmax(-1), Sampler(temperature=0, cfg_scale=2.0).pick(logits[[0, 20000]]))


@torch.no_grad()
def test_sjd_samples_follow_the_exact_joint_distribution(monkeypatch):
    trunk, unit, cond = tiny_model()  # grid (2, 2), V = 3: 81 sequences
    sampler = Sampler(cfg_scale=2.0, cfg_schedule="linear", top_k=2, speculative="sjd", window=2)
    _, joint = exact_joint(trunk, unit, cond, 1, sampler)
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-5)
    with PassCounter(trunk) as counter:
        counts = sjd_counts(trunk, unit, cond, 1, sampler, calls=600, rows=5)
    assert counter.count < 600 * 4 * 0.85  # several tokens per pass: the multi-token paths were exercised
    assert chi_square_pvalue(counts, joint) > 1e-3

    # the test has power: wrong rules fail it (p < 1e-3) on fewer samples, accepting every draft and,
    # subtler, drawing a rejected position from p instead of the residual norm(max(0, p - q))
    with monkeypatch.context() as patch:
        patch.setattr(speculative, "accept_drafts", lambda target, proposal, uniform: target >= 0)
        assert chi_square_pvalue(sjd_counts(trunk, unit, cond, 1, sampler, calls=100, rows=6), joint) < 1e-3
    with monkeypatch.context() as patch:
        patch.setattr(speculative, "residual", lambda p, q: p)
        assert chi_square_pvalue(sjd_counts(trunk, unit, cond, 1, sampler, calls=150, rows=8), joint) < 1e-3


@torch.no_grad()
def test_unguided_sjd_with_a_full_window_is_exact():
    trunk, unit, cond = tiny_model(grid=(3,), vocab=4, seed=1)  # 64 sequences, window > N
    sampler = Sampler(temperature=1.2, speculative="sjd", window=8)
    _, joint = exact_joint(trunk, unit, cond, 4, sampler)
    assert chi_square_pvalue(sjd_counts(trunk, unit, cond, 4, sampler, calls=250, rows=8), joint) > 1e-3


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(top_k=1, cfg_scale=3.0)])
@torch.no_grad()
def test_greedy_sjd_equals_greedy_decoding(settings):
    trunk, unit, cond = tiny_model(grid=(4, 5), vocab=33)
    plain = Sampler(seed=3, **settings)
    c = cond.for_sampling(torch.tensor([0, 3, 7]), plain.guided).tokens
    expected = unit.generate(trunk, c, (4, 5), plain)
    for window in (1, 4, 32):
        sjd = Sampler(seed=3, speculative="sjd", window=window, **settings)
        assert torch.equal(unit.generate(trunk, c, (4, 5), sjd), expected)


@torch.no_grad()
def test_passes_fewer_than_tokens_on_a_peaked_model_and_never_more():
    trunk, unit, cond = tiny_model(grid=(4, 5), vocab=33)
    c = cond(torch.tensor([2, 5])).tokens
    for settings in (dict(), dict(top_k=5, window=3), dict(temperature=0, window=1)):
        for seed in range(3):
            with PassCounter(trunk) as counter:
                unit.generate(trunk, c, (4, 5), Sampler(seed=seed, speculative="sjd", **settings))
            assert counter.count <= 20
    peaked = nn.Linear(D, 33, bias=True)  # a large bias on token 7: the next token is predictable
    with torch.no_grad():
        peaked.weight.copy_(unit.head.proj.weight)
        peaked.bias.zero_()[7] = 8.0
    unit.head.proj = peaked
    with PassCounter(trunk) as counter:
        tokens = unit.generate(trunk, c, (4, 5), Sampler(seed=0, speculative="sjd", window=8))
    assert (tokens == 7).float().mean() > 0.9
    assert counter.count <= 6  # of 20 tokens


@torch.no_grad()
def test_sjd_reads_padded_text_conditions():
    trunk, unit, _ = tiny_model(grid=(3, 4), vocab=17)
    c = torch.randn(4, 3, D)  # (2B, n, D): a left-padded caption batch and its null rows
    valid = torch.tensor(
        [[False, True, True], [True, True, True], [False, False, True], [False, False, True]]
    )
    padded = trunk.with_prefix_padding(valid)
    greedy = Sampler(temperature=0, cfg_scale=2.0)
    expected = unit.generate(padded, c, (3, 4), greedy)
    assert torch.equal(
        unit.generate(padded, c, (3, 4), replace(greedy, speculative="sjd", window=5)), expected
    )
    sampler = Sampler(seed=0, cfg_scale=2.0, speculative="sjd", window=5)
    cached = unit.generate(padded, c, (3, 4), sampler)
    assert torch.equal(cached, unit.generate(padded, c, (3, 4), sampler, use_cache=False))


@torch.no_grad()
def test_kv_cache_truncate_drops_rolled_back_entries():
    torch.manual_seed(0)
    trunk, unit = (
        Trunk(trunk_config("debug")).eval(),
        build_unit("next_token", d_model=D, grid=(2, 3), vocab_size=9),
    )
    tokens, c = torch.randint(0, 9, (2, 2, 3)), torch.randn(2, 1, D)
    batch = unit.prepare(tokens, c)  # inputs (2, 6, D)
    full = trunk(batch.inputs, batch.positions, batch.mask)
    cache = trunk.make_cache(2, 6)
    trunk(batch.inputs[:, :3], batch.positions[:3], Causal(), cache=cache)
    junk = torch.randn(2, 3, D)  # rejected drafts, then rolled back
    trunk(junk, batch.positions[3:6], Causal(), cache=cache)
    cache.truncate(3)
    assert cache.length == 3
    rest = trunk(batch.inputs[:, 3:], batch.positions[3:], Causal(), cache=cache)
    torch.testing.assert_close(rest, full[:, 3:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(7)


@pytest.mark.parametrize("unit_name", ["next_token", "random_order"])
@torch.no_grad()
def test_cached_and_uncached_sjd_agree(unit_name):
    trunk, unit, cond = tiny_model(unit_name, grid=(3, 4), vocab=17)
    for sampler in (
        Sampler(seed=4, speculative="sjd", window=5, cfg_scale=2.0),
        Sampler(seed=4, speculative="lantern", lantern_k=4, lantern_delta=0.2),
    ):
        c = cond.for_sampling(torch.tensor([1, 6]), sampler.guided).tokens
        cached = unit.generate(trunk, c, (3, 4), sampler)
        assert torch.equal(cached, unit.generate(trunk, c, (3, 4), sampler, use_cache=False))


@torch.no_grad()
def test_random_order_sjd_uses_the_target_aware_embedding():
    trunk, unit, cond = tiny_model("random_order", grid=(3, 4), vocab=17)
    c = cond(torch.tensor([1, 6, 8])).tokens
    greedy = unit.generate(trunk, c, (3, 4), Sampler(temperature=0))
    assert torch.equal(
        unit.generate(trunk, c, (3, 4), Sampler(temperature=0, speculative="sjd", window=6)), greedy
    )
    unit.add_target_embedding = lambda x, start, n_cond: x  # without it, decoding differs: it matters
    assert not torch.equal(unit.generate(trunk, c, (3, 4), Sampler(temperature=0, speculative="sjd")), greedy)


@torch.no_grad()
def test_random_order_sjd_is_exact():
    trunk, unit, cond = tiny_model("random_order", grid=(3,), vocab=4, seed=2)
    sampler = Sampler(speculative="sjd", window=2)
    _, joint = exact_joint(trunk, unit, cond, 3, sampler)
    assert chi_square_pvalue(sjd_counts(trunk, unit, cond, 3, sampler, calls=250, rows=8), joint) > 1e-3


def test_lantern_relaxed_probability_and_acceptance():
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.15, 0.05]])  # (1, V)
    neighbours = torch.tensor(
        [[1, 2, 3, 4], [0, 2, 3, 4], [3, 1, 0, 4], [2, 4, 1, 0], [3, 2, 1, 0]]
    )  # (V, 4)
    drafts = torch.tensor([2])
    assert relaxed_probability(probs, drafts, neighbours, 0.0).item() == pytest.approx(0.1)  # exact p
    assert relaxed_probability(probs, drafts, neighbours, 0.2).item() == pytest.approx(0.25)  # + token 3
    assert relaxed_probability(probs, drafts, neighbours, 0.36).item() == pytest.approx(0.45)  # + 3 and 1
    assert relaxed_probability(probs, drafts, neighbours[:, :0], 0.5).item() == pytest.approx(0.1)

    g = torch.Generator().manual_seed(0)
    p = torch.rand(64, 6, 10, generator=g).softmax(-1)
    q = torch.rand(64, 6, 10, generator=g).softmax(-1)
    x = torch.multinomial(q.flatten(0, 1), 1, generator=g).view(64, 6)
    u = torch.rand(64, 6, generator=g)
    table = nearest_neighbours(torch.randn(10, 3, generator=g), 4)
    proposal = q.gather(-1, x[..., None])[..., 0]
    exact = accept_drafts(p.gather(-1, x[..., None])[..., 0], proposal, u)
    assert torch.equal(accept_drafts(relaxed_probability(p, x, table, 0.0), proposal, u), exact)
    relaxed = accept_drafts(relaxed_probability(p, x, table, 0.3), proposal, u)
    assert (relaxed >= exact).all() and relaxed.sum() > exact.sum()  # every exact acceptance, and more
    leading = lambda a: a.long().cumprod(1).sum(1)
    assert (leading(relaxed) >= leading(exact)).all()


@torch.no_grad()
def test_lantern_with_zero_delta_is_sjd_and_relaxing_saves_passes():
    trunk, unit, cond = tiny_model(grid=(4, 5), vocab=33)
    c = cond(torch.tensor([2, 5])).tokens
    passes = {}
    for mode, delta in (("sjd", 0.0), ("lantern", 0.0), ("lantern", 0.5)):
        outputs, passes[mode, delta] = [], 0
        for seed in range(4):
            sampler = Sampler(seed=seed, speculative=mode, window=6, lantern_k=8, lantern_delta=delta)
            with PassCounter(trunk) as counter:
                outputs.append(unit.generate(trunk, c, (4, 5), sampler))
            passes[mode, delta] += counter.count
        if mode == "sjd":
            exact = outputs
        elif delta == 0.0:
            assert all(torch.equal(a, b) for a, b in zip(outputs, exact))
    assert passes["lantern", 0.0] == passes["sjd", 0.0]
    assert passes["lantern", 0.5] < passes["sjd", 0.0]


def test_nearest_neighbours_by_euclidean_distance():
    codes = torch.tensor([[0.0], [1.0], [3.0], [7.0], [7.5]])
    table = nearest_neighbours(codes, 2, chunk=2)
    assert torch.equal(table, torch.tensor([[1, 2], [0, 2], [1, 0], [4, 2], [3, 2]]))
    assert nearest_neighbours(codes, 10).shape == (5, 4)  # at most V - 1 other codes


def test_residual_is_the_normalised_positive_part():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual(p, p), p)  # nothing left: the target itself


@torch.no_grad()
def test_prefix_and_fixed_work_with_sjd():
    trunk, unit, cond = tiny_model(grid=(4, 5), vocab=33)
    c = cond(torch.tensor([2, 5])).tokens
    given = torch.randint(0, 33, (2, 2, 5))
    greedy = unit.generate(trunk, c, (4, 5), Sampler(temperature=0), prefix=given)
    sjd = unit.generate(trunk, c, (4, 5), Sampler(temperature=0, speculative="sjd", window=4), prefix=given)
    assert torch.equal(sjd, greedy) and torch.equal(sjd[:, :2], given)
    sampled = unit.generate(trunk, c, (4, 5), Sampler(seed=1, speculative="sjd"), prefix=given)
    assert torch.equal(sampled[:, :2], given)

    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, [3, 4, 11, 19]] = True
    fixed = (torch.full((1, 20), 5), mask)
    greedy = unit.generate(trunk, c, (4, 5), Sampler(temperature=0), fixed=fixed)
    sjd = unit.generate(trunk, c, (4, 5), Sampler(temperature=0, speculative="sjd", window=4), fixed=fixed)
    assert torch.equal(sjd, greedy)
    sampled = unit.generate(
        trunk, c, (4, 5), Sampler(seed=2, speculative="lantern", lantern_k=3), fixed=fixed
    )
    assert (sampled.flatten(1)[:, mask[0]] == 5).all()


def test_bad_speculative_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="window=0"):
        Sampler(speculative="sjd", window=0)
    with pytest.raises(ConfigError, match="unknown speculative decoding 'medusa'"):
        Sampler(speculative="medusa")
    with pytest.raises(ConfigError, match=r"lantern_delta=1\.5"):
        Sampler(speculative="lantern", lantern_delta=1.5)
    trunk, unit, cond = tiny_model(grid=(2, 2), vocab=3)
    c, teacher = cond(torch.tensor([1])).tokens, torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ConfigError, match="teacher forcing"):
        unit.generate(trunk, c, (2, 2), Sampler(speculative="sjd"), teacher=teacher, teacher_prob=0.5)
    levels = build_unit(
        "next_token", d_model=D, grid=(2, 2), vocab_size=3, head="parallel", head_kwargs={"levels": 2}
    )
    with pytest.raises(ConfigError, match="one id per position"):
        levels.generate(trunk, c, (2, 2), Sampler(speculative="sjd"))


def test_command_line_options_build_a_speculative_sampler():
    import argparse

    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    args = parser.parse_args(
        ["--speculative", "lantern", "--window", "8", "--lantern-k", "50", "--lantern-delta", "0.2"]
    )
    sampler = sampler_from_arguments(args)
    assert (sampler.speculative, sampler.window, sampler.lantern_k, sampler.lantern_delta) == (
        "lantern",
        8,
        50,
        0.2,
    )
    assert sampler_from_arguments(parser.parse_args([])).speculative is None
