"""Sampler maths: filters keep exactly the brute-force support; CFG schedules follow their formulas."""

import math

import pytest
import torch

from mmar.errors import ConfigError
from mmar.kernels import cfg_mix, filter_logits, sample
from mmar.sampling import Sampler


def brute_force_support(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> set[int]:
    """Definitions written out one token at a time, each filter on what the previous one left."""
    keep = set(range(logits.numel()))
    values = logits.tolist()
    if top_k:
        ranked = sorted(keep, key=lambda i: -values[i])
        keep = set(ranked[:top_k])
    if top_p < 1:
        z = sum(math.exp(values[i]) for i in keep)
        ranked, mass, kept = sorted(keep, key=lambda i: -values[i]), 0.0, set()
        for i in ranked:
            if mass >= top_p:
                break
            kept.add(i)
            mass += math.exp(values[i]) / z
        keep = kept
    if min_p > 0:
        z = sum(math.exp(values[i]) for i in keep)
        p_max = max(math.exp(values[i]) / z for i in keep)
        keep = {i for i in keep if math.exp(values[i]) / z >= min_p * p_max}
    return keep


@pytest.mark.parametrize(
    "top_k,top_p,min_p",
    [
        (0, 1.0, 0.0),
        (5, 1.0, 0.0),
        (0, 0.7, 0.0),
        (0, 1.0, 0.2),
        (10, 0.9, 0.05),
        (3, 0.5, 0.5),
        (1, 1.0, 0.0),
    ],
)
def test_filters_keep_brute_force_support(top_k, top_p, min_p):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 37, generator=gen, dtype=torch.float64) * 2
    kept = torch.isfinite(filter_logits(logits, top_k, top_p, min_p))
    for row in range(8):
        expected = brute_force_support(logits[row], top_k, top_p, min_p)
        assert set(kept[row].nonzero().flatten().tolist()) == expected


def test_draws_stay_in_support_and_follow_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(1)
    ids = sample(logits, top_k=3, generator=gen)
    assert ids.max() <= 2
    freq = torch.bincount(ids, minlength=5).double() / len(ids)
    expected = torch.tensor([2.0, 1.0, 0.5]).exp() / torch.tensor([2.0, 1.0, 0.5]).exp().sum()
    torch.testing.assert_close(freq[:3], expected.double(), atol=0.015, rtol=0)


def test_seeded_draws_repeat_and_greedy_is_argmax():
    logits = torch.randn(4, 50)
    a = sample(logits, generator=torch.Generator().manual_seed(3))
    b = sample(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(sample(logits, temperature=0), logits.argmax(-1))


def test_cfg_mix_formula():
    c, u = torch.randn(3, 7), torch.randn(3, 7)
    torch.testing.assert_close(cfg_mix(c, u, 4.0), u + 4.0 * (c - u))
    scales = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(cfg_mix(c, u, scales), u + scales[:, None] * (c - u))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999])
def test_cfg_schedules_match_formulas(p):
    s = 4.0
    assert Sampler(cfg_scale=s).scale_at(p) == s
    assert Sampler(cfg_scale=s, cfg_schedule="linear").scale_at(p) == pytest.approx(1 + (s - 1) * p)
    cos = Sampler(cfg_scale=s, cfg_schedule="cosine", cfg_power=2.0).scale_at(p)
    assert cos == pytest.approx(1 + (s - 1) * (1 - math.cos(math.pi * p**2)) / 2)
    inter = Sampler(cfg_scale=s, cfg_schedule="interval", cfg_interval=(0.2, 0.6)).scale_at(p)
    assert inter == (s if 0.2 <= p <= 0.6 else 1.0)


def test_pick_splits_cfg_batch_cond_first():
    sampler = Sampler(cfg_scale=3.0, temperature=0)
    cond, uncond = torch.randn(2, 9), torch.randn(2, 9)
    ids = sampler.pick(torch.cat([cond, uncond]))
    assert torch.equal(ids, (uncond + 3.0 * (cond - uncond)).argmax(-1))


def test_pick_guides_each_row_at_its_own_progress():
    sampler = Sampler(cfg_scale=3.0, cfg_schedule="linear", temperature=0)
    assert sampler.scales(torch.tensor([0.0, 0.5, 1.0])).tolist() == [1.0, 2.0, 3.0]
    cond, uncond = torch.randn(2, 9), torch.randn(2, 9)
    ids = sampler.pick(torch.cat([cond, uncond]), torch.tensor([0.0, 1.0]))
    expected = torch.stack([cond[0], uncond[1] + 3.0 * (cond[1] - uncond[1])]).argmax(-1)
    assert torch.equal(ids, expected)


def test_bad_sampler_settings():
    with pytest.raises(ConfigError, match="cfg_schedule"):
        Sampler(cfg_schedule="exp")
    with pytest.raises(ConfigError, match="top_p"):
        Sampler(top_p=0.0)
