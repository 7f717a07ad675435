"""Decoding speed work never changes what is drawn: a tiny random next-token model with fixed seeds
gives the tokens recorded before the fast decode step (static cache views, fused sampler) existed."""

import pytest
import torch

from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit

SAMPLERS = {
    "plain": dict(cfg_scale=2.0, seed=3),
    "filtered": dict(cfg_scale=3.0, cfg_schedule="linear", temperature=0.9, top_k=40, top_p=0.8, seed=5),
    "unguided": dict(top_p=0.95, min_p=0.01, seed=7),
}
RECORDED = {  # tokens [2, 16] of the 4 x 4 grid, drawn by the plain step before the speed work
    "plain": [
        [93, 88, 64, 285, 18, 30, 284, 241, 183, 183, 297, 160, 35, 279, 90, 43],
        [78, 159, 122, 30, 231, 175, 18, 92, 244, 162, 123, 234, 205, 46, 174, 226],
    ],
    "filtered": [
        [135, 58, 40, 29, 32, 161, 81, 251, 128, 180, 27, 270, 269, 285, 95, 26],
        [30, 257, 241, 27, 270, 178, 262, 40, 263, 32, 259, 96, 43, 169, 293, 236],
    ],
    "unguided": [
        [191, 12, 245, 291, 249, 268, 191, 195, 236, 98, 20, 88, 96, 287, 131, 111],
        [105, 118, 74, 112, 255, 114, 44, 240, 203, 274, 166, 261, 89, 236, 281, 7],
    ],
}


def tiny_model():
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_token", d_model=64, grid=(4, 4), vocab_size=300).eval()
    return trunk, unit, torch.randn(2, 1, 64)  # cond (B, 1, D)


def conditions(cond: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """The CFG batch cat([cond, null]) with a fixed stand-in for the null condition."""
    if not sampler.guided:
        return cond
    null = torch.randn(cond.shape, generator=torch.Generator().manual_seed(1))
    return torch.cat([cond, null])  # (2B, 1, D)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cached_decode_draws_the_recorded_tokens(name):
    trunk, unit, cond = tiny_model()
    sampler = Sampler(**SAMPLERS[name])
    tokens = unit.generate(trunk, conditions(cond, sampler), (4, 4), sampler)  # (B, 4, 4)
    assert tokens.flatten(1).tolist() == RECORDED[name]
