"""Trunk maths: KV-cached decoding equals the full forward, causality, RoPE identities."""

import pytest
import torch

from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.trunk import TRUNK_PRESETS, Trunk, apply_rope, rope_angles, trunk_config
from mmar.units import grid_positions


def make_trunk(**overrides):
    torch.manual_seed(0)
    return Trunk(trunk_config("debug", **overrides)).eval()


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True}, {"adaln": True}])
def test_kv_cache_equals_full_forward(overrides):
    trunk = make_trunk(**overrides)
    x = torch.randn(2, 13, 64)  # (B, T, D)
    positions = torch.cat([torch.zeros(1, 2, dtype=torch.long), grid_positions((3, 4))])  # (13, 2)
    cond = torch.randn(2, 64) if overrides.get("adaln") else None
    if cond is not None:  # adaLN-Zero starts as identity; perturb so the test sees the modulation
        for p in trunk.parameters():
            p.data.add_(0.01 * torch.randn_like(p))
    full = trunk(x, positions, Causal(), cond=cond)
    cache = trunk.make_cache(2, 13)
    chunks = [(0, 5), (5, 6), (6, 13)]  # a prefill, one decode step, then a longer chunk
    cached = torch.cat([trunk(x[:, a:b], positions[a:b], Causal(), cond, cache) for a, b in chunks], dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    assert cache.length == 13


def test_causality_perturbing_token_t_leaves_earlier_outputs():
    trunk = make_trunk()
    x = torch.randn(1, 10, 64)
    positions = torch.arange(10)[:, None]
    base = trunk(x, positions, Causal())
    t = 6
    x2 = x.clone()
    x2[:, t] += torch.randn(64)
    out = trunk(x2, positions, Causal())
    assert torch.equal(out[:, :t], base[:, :t])
    assert not torch.allclose(out[:, t:], base[:, t:])


def test_rope_zero_position_is_identity_and_relative():
    head_dim = 16
    q = torch.randn(1, 1, 1, head_dim)
    zero = rope_angles(torch.zeros(1, 2), head_dim)  # (1, Dh/2)
    assert torch.equal(apply_rope(q, zero.cos(), zero.sin()), q)
    # 2D RoPE: the score between two positions depends only on their offset
    k = torch.randn(1, 1, 1, head_dim)

    def score(pq, pk):
        aq, ak = rope_angles(torch.tensor([pq]), head_dim), rope_angles(torch.tensor([pk]), head_dim)
        return (apply_rope(q, aq.cos(), aq.sin()) * apply_rope(k, ak.cos(), ak.sin())).sum()

    torch.testing.assert_close(score([2, 3], [1, 1]), score([5, 7], [4, 5]))
    assert not torch.allclose(score([2, 3], [1, 1]), score([2, 3], [1, 2]))


def test_rope_splits_pairs_between_axes():
    angles = rope_angles(torch.tensor([[0, 1]]), head_dim=16)  # rows get pairs 0..3, cols 4..7
    assert torch.equal(angles[0, :4], torch.zeros(4))
    assert (angles[0, 4:] != 0).all()


def test_presets_and_bad_overrides():
    b = TRUNK_PRESETS["B"]
    assert (b.n_layer, b.d_model, b.n_head) == (12, 768, 12)
    with pytest.raises(ConfigError, match="unknown trunk preset"):
        trunk_config("XXL")
    with pytest.raises(ConfigError, match="unknown trunk field"):
        trunk_config("debug", width=3)
